"""UNet++: deep supervision trains every head, pruning predicts with head k alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import BATCH, CLASSES, SIDE, build

from segfw.models.unetpp import UnetPlusPlus


def small_unetpp(**arguments) -> UnetPlusPlus:
    return build("unetpp", "mobilenetv2", filters=[8, 16, 32], **arguments)


def test_unetpp_deep_supervision_trains_every_head_on_the_mean_of_their_losses():
    torch.manual_seed(0)
    network = small_unetpp()
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    outputs = network.training_outputs(images)
    heads = network.head_logits(images)
    assert len(outputs.loss_terms) == len(heads) == 3
    assert [w for _, w in outputs.loss_terms] == pytest.approx([1 / 3] * 3)
    torch.testing.assert_close(outputs.logits, torch.stack(heads).mean(0))
    target = torch.randint(0, CLASSES, (BATCH, SIDE, SIDE))
    sum(w * F.cross_entropy(logits, target) for logits, w in outputs.loss_terms).backward()
    for name, head in network.heads.items():
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0, name


def test_unetpp_pruned_prediction_is_head_k_of_the_full_network_and_skips_the_rest():
    torch.manual_seed(0)
    full = small_unetpp().eval()
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with torch.no_grad():
        heads = full.head_logits(images)
    for k in (1, 2, 3):
        pruned = small_unetpp(prune_level=k).eval()
        pruned.load_state_dict(full.state_dict())
        ran = []
        hooks = [
            node.register_forward_hook(lambda m, i, o, name=name, ran=ran: ran.append(name))
            for name, node in pruned.nodes.items()
        ]
        with torch.no_grad():
            prediction = pruned(images)
        for hook in hooks:
            hook.remove()
        torch.testing.assert_close(prediction, heads[k - 1])
        assert sorted(ran) == sorted(n for n in pruned.nodes if sum(map(int, n.split("_"))) <= k)


def test_unetpp_without_deep_supervision_has_one_head_on_the_last_column():
    network = small_unetpp(deep_supervision=False)
    assert list(network.heads) == ["3"]
    outputs = network.training_outputs(torch.randn(BATCH, 3, SIDE, SIDE))
    assert len(outputs.loss_terms) == 1 and outputs.loss_terms[0][1] == 1.0
