"""Checkpoints of tiny modules with random weights, for tests of what runs on a trained model
(predict, evaluate with an inference mode, export): no training needed to test the plumbing."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from segfw.training.module import SegmentationModule

CLASS_NAMES = ["background", "road", "car"]
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142]]


def tiny_module(
    architecture: str = "unet",
    backbone: str = "mobilenetv2",
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    class_names: list[str] = CLASS_NAMES,
    palette: list[list[int]] | None = PALETTE,
) -> SegmentationModule:
    """A module at ``size`` (height, width), in eval mode, with the architecture's default
    settings and reproducible random weights; three classes unless ``class_names`` says."""
    torch.manual_seed(seed)
    module = SegmentationModule(
        model={"name": architecture, "height": size[0], "width": size[1]},
        backbone={"name": backbone, "weights": None},
        num_classes=len(class_names),
        class_names=class_names,
        palette=palette,
    )
    return module.eval()


def save_checkpoint(module: SegmentationModule, path: Path) -> Path:
    """Writes ``module`` as Lightning writes checkpoints, so ``load_from_checkpoint`` reads it."""
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path
