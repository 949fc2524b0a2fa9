"""The model zoo: architectures x backbones, built from config. ``python -m segfw.models`` prints
the parameter count of each pair."""

from segfw.models.backbones import BACKBONES, get_backbone
from segfw.models.base import SegmentationNetwork, TrainingOutputs
from segfw.models.builder import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "SegmentationNetwork",
    "TrainingOutputs",
    "build_model",
    "get_backbone",
]
