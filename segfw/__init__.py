"""segfw: semantic-segmentation experiments configured with Hydra and trained with Lightning.

The Python API (no Hydra needed for the first three)::

    import segfw
    predictor = segfw.load("run/checkpoints/last.ckpt")  # segfw.deploy.predictor.Predictor
    masks = predictor.predict(["a.jpg", "b.png"])         # class-index masks at each image's size
    module = segfw.SegmentationModule.from_checkpoint("run/checkpoints/last.ckpt")
    metrics = segfw.train(["experiment=quickstart"])      # composes segfw/conf/ as train.py does
    scores = segfw.evaluate("run/checkpoints/last.ckpt", split="test")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Imported on first use: ``import segfw`` stays light, and the Hydra-free names do not load Hydra.
_EXPORTS = {
    "load": "segfw.deploy.predictor",
    "Predictor": "segfw.deploy.predictor",
    "SegmentationModule": "segfw.training.module",
    "SegmentationDataModule": "segfw.data.datamodule",
    "train": "segfw.commands.api",
    "evaluate": "segfw.commands.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segfw' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
