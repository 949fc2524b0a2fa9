"""SegNet: unpooling with the encoder's own indices where it max-pools, learned up-sampling
elsewhere, on named backbones and generic encoders; full-resolution output; the paper's size."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from model_helpers import BATCH, CLASSES, SIDE, build, build_generic, parameter_count
from torch import nn

from segfw.models.segnet import IndexedMaxPool2d, MaxUnpool


def test_segnet_on_vgg_unpools_every_stage_with_the_encoders_own_indices():
    torch.manual_seed(0)
    network = build("segnet", "vgg16", num_upsample_layers=5)
    unpools = [m for m in network.decoder.modules() if isinstance(m, MaxUnpool)]
    pools = [m for m in network.encoder.modules() if isinstance(m, IndexedMaxPool2d)]
    assert len(unpools) == len(pools) == 5
    assert {id(u.pool) for u in unpools} == {id(p) for p in pools}
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in network.modules())

    # Each unpooled map is non-zero only where the paired pool's input had its window maximum.
    seen = {}  # pool -> its input, unpool -> its output

    def keep(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        seen[module] = inputs[0] if module in pools else output

    hooks = [m.register_forward_hook(keep) for m in pools + unpools]
    with torch.no_grad():
        network(torch.randn(BATCH, 3, SIDE, SIDE))
    for hook in hooks:
        hook.remove()
    for unpool in unpools:
        before_pool = seen[unpool.pool]
        window_max = F.interpolate(F.max_pool2d(before_pool, 2), scale_factor=2)
        placed = seen[unpool] != 0
        assert placed.any()
        assert (before_pool == window_max)[placed].all()


def test_segnet_on_resnet_unpools_at_the_stem_and_learns_the_other_upsamplings():
    network = build("segnet", "resnet50", num_upsample_layers=3)
    # Decoder stages from the deepest: undo layer2's strided conv, the stem's max-pool, its conv.
    ups = [stage[-1] for stage in network.decoder[:3]]
    assert [type(up) for up in ups] == [nn.ConvTranspose2d, MaxUnpool, nn.ConvTranspose2d]
    assert ups[1].pool is network.encoder.maxpool


def test_segnet_on_a_timm_resnet_unpools_at_its_stem_too():
    network = build_generic("segnet", "resnet18d", num_upsample_layers=3)
    ups = [stage[-1] for stage in network.decoder[:3]]
    assert [type(up) for up in ups] == [nn.ConvTranspose2d, MaxUnpool, nn.ConvTranspose2d]
    assert ups[1].pool is network.encoder.model.maxpool


def test_segnet_on_convnext_learns_every_upsampling_across_its_missing_stride_2_level():
    network = build_generic("segnet", "convnext_atto", num_upsample_layers=3)
    ups = [stage[-1] for stage in network.decoder[:3]]
    assert all(type(up) is nn.ConvTranspose2d for up in ups)
    # Levels 1 and 0 (no ConvNeXt features) take the stem's 40 channels.
    assert [up.in_channels for up in ups] == [40, 40, 40]
    assert network.head.in_channels == 40
    with torch.no_grad():
        assert network(torch.randn(BATCH, 3, SIDE, SIDE)).shape == (BATCH, CLASSES, SIDE, SIDE)


def test_segnet_with_unpooling_traces_for_export_and_holds_at_another_size():
    network = build("segnet", "resnet50", num_upsample_layers=3).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still what export uses
        traced = torch.jit.trace(network, torch.randn(1, 3, SIDE, SIDE), check_trace=False)
        images = torch.randn(2, 3, 48, 64)
        torch.testing.assert_close(traced(images), network(images))


def test_segnet_vgg16_with_the_full_decoder_has_the_papers_parameter_count():
    # SegNet paper (Badrinarayanan et al., 2017, Table 6): 29.5 M parameters.
    count = parameter_count(build("segnet", "vgg16", num_upsample_layers=5))
    assert count == pytest.approx(29.5e6, rel=0.02), count


@pytest.mark.parametrize("layers", [2, 4])
def test_segnet_output_is_full_resolution_at_every_depth(layers):
    network = build("segnet", "mobilenetv2", side=64, num_upsample_layers=layers)
    with torch.no_grad():
        assert network(torch.randn(BATCH, 3, 64, 64)).shape == (BATCH, CLASSES, 64, 64)
