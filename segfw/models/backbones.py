"""The table of backbones: segfw's name -> the encoder that implements it and how to feed it.

This table is the one place that knows encoder names; ``conf/backbone/<name>.yaml`` refers to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from segfw.choices import choose

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's resnetv2, mobilenetv1 and xception weights were trained on inputs scaled to [-1, 1].
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Backbone:
    """One backbone.

    Attributes:
        encoder: encoder name for ``segmentation_models_pytorch`` (``tu-`` prefix: a timm model).
        mean: per-channel mean of the inputs the ImageNet weights were trained on (0..1 scale).
        std: per-channel standard deviation of those inputs.
        imagenet: whether ImageNet weights have been released for this encoder.
    """

    encoder: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    imagenet: bool = True


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("vgg16"),
    "vgg19": Backbone("vgg19"),
    "resnet50": Backbone("resnet50"),
    "resnet101": Backbone("resnet101"),
    "resnet152": Backbone("resnet152"),
    "resnet50v2": Backbone("tu-resnetv2_50", HALF_MEAN, HALF_STD),
    "resnet101v2": Backbone("tu-resnetv2_101", HALF_MEAN, HALF_STD),
    # timm publishes no ImageNet weights for the plain pre-activation ResNet-152.
    "resnet152v2": Backbone("tu-resnetv2_152", HALF_MEAN, HALF_STD, imagenet=False),
    "mobilenet": Backbone("tu-mobilenetv1_100", HALF_MEAN, HALF_STD),
    "mobilenetv2": Backbone("mobilenet_v2"),
    # DeepLab's aligned Xception-65, which (unlike SMP's own xception) can be dilated.
    "xception": Backbone("tu-xception65", HALF_MEAN, HALF_STD),
}


def get_backbone(name: str) -> Backbone:
    """Looks a backbone up by segfw name.

    Raises:
        ConfigError: the name is not in the table; the message lists the choices.
    """
    return choose(BACKBONES, name, "backbone.name")
