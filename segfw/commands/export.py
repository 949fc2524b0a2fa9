"""``python export.py ckpt_path=PATH format=onnx|torchscript output=DIR``: a deployable model."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from segfw.commands.config import plain
from segfw.deploy.export import export as export_model
from segfw.training.module import SegmentationModule


def export(cfg: DictConfig) -> dict[str, Any]:
    """Exports ``cfg.ckpt_path`` as ``segfw.deploy.export.export`` says; returns the metadata."""
    settings = plain(cfg)
    module = SegmentationModule.from_checkpoint(settings["ckpt_path"])
    return export_model(
        module,
        settings["format"],
        settings["output"],
        name=settings["name"],
        dynamic_size=settings["dynamic_size"],
        opset=settings["opset"],
        tolerance=settings["tolerance"],
        source=str(settings["ckpt_path"]),
    )
