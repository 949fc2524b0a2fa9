"""Speed options on CPU: bf16 mixed precision, the channels_last layout and torch.compile train,
and none of them changes what a checkpoint holds. (16-mixed needs a GPU: docs/scaling.md.)"""

from __future__ import annotations

import math

import pytest
import torch

from segfw.commands import train as tasks
from segfw.commands.config import build_datamodule, build_module
from segfw.commands.train import train
from segfw.training.module import SegmentationModule

FAST = "trainer.fast_dev_run=true"


class OutputDtypes:
    """Records the dtype of the network's outputs while it trains."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.dtypes: set[torch.dtype] = set()
        module.register_forward_hook(lambda _, __, output: self.dtypes.add(output.dtype))


def test_bf16_mixed_precision_runs_the_network_in_bfloat16(train_config, monkeypatch):
    seen: list[OutputDtypes] = []

    def recording_build_module(cfg):
        module = build_module(cfg)
        seen.append(OutputDtypes(module.net))
        return module

    monkeypatch.setattr(tasks, "build_module", recording_build_module)
    metrics = tasks.train(train_config("trainer.precision=bf16-mixed", FAST))
    assert seen[0].dtypes == {torch.bfloat16}
    assert math.isfinite(metrics["val/loss"]) and 0.0 <= metrics["val/mIoU"] <= 1.0


def test_channels_last_gives_the_same_outputs_and_weights(train_config):
    cfg = train_config()
    plain = build_module(cfg).eval()
    cfg.channels_last = True
    nhwc = build_module(cfg).eval()
    nhwc.load_state_dict(plain.state_dict())
    convolution = next(m for m in nhwc.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert convolution.weight.is_contiguous(memory_format=torch.channels_last)

    batch = next(iter(build_datamodule(cfg.data, cfg.model).val_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(nhwc(batch["image"]), plain(batch["image"]))
    # The state dict holds the same values whatever the layout, so checkpoints are interchangeable.
    for name, weight in nhwc.state_dict().items():
        assert torch.equal(weight, plain.state_dict()[name]), name

    metrics = train(train_config("channels_last=true", FAST))
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


@pytest.mark.slow
def test_compiled_network_trains_and_keeps_its_parameter_names(train_config, tmp_path):
    cfg = train_config("compile=true", "trainer.max_epochs=1")
    metrics = train(cfg)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    state = torch.load(metrics["best_checkpoint"], map_location="cpu")["state_dict"]
    assert not any("_orig_mod" in name for name in state)
    SegmentationModule.load_from_checkpoint(metrics["best_checkpoint"], map_location="cpu")
