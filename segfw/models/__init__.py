"""The model zoo: architectures x backbones, built from config. ``python -m segfw.models`` prints
the parameter count of each pair; ``--encoders PATTERN`` lists the timm encoders segfw can use."""

from segfw.models.backbones import BACKBONES, Backbone, backbone_spec, get_backbone
from segfw.models.base import SegmentationNetwork, TrainingOutputs
from segfw.models.builder import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "BACKBONES",
    "Backbone",
    "SegmentationNetwork",
    "TrainingOutputs",
    "backbone_spec",
    "build_model",
    "get_backbone",
]
