"""Backbones: segfw's eleven named ones, and any timm encoder by name (``backbone=timm``).

The ``BACKBONES`` table is the one place that knows the eleven names; ``segfw/conf/backbone/<name>.yaml``
refers to it. ``backbone=timm backbone.encoder=<name>`` takes any timm model that returns
multi-scale features, and SMP's Mix Transformers ``mit_b0`` ... ``mit_b5`` (SegFormer's encoders,
which timm does not have); ``python -m segfw.models --encoders PATTERN`` lists them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import timm
from timm.models import get_pretrained_cfg, split_model_name_tag

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's resnetv2, mobilenetv1 and xception weights were trained on inputs scaled to [-1, 1].
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

# backbone.name of the generic backbone, whose backbone.encoder names the model.
TIMM = "timm"
# SMP's Mix Transformer encoders, SegFormer's; their ImageNet weights were trained (as SegFormer
# was fine-tuned) on inputs normalized with the ImageNet statistics.
MIT_ENCODERS = tuple(f"mit_b{size}" for size in range(6))
LISTING_HINT = "python -m segfw.models --encoders 'PATTERN' lists the encoders segfw can use"


@dataclass(frozen=True)
class Backbone:
    """One backbone.

    Attributes:
        encoder: encoder name for ``segmentation_models_pytorch`` (``tu-`` prefix: a timm model).
        mean: per-channel mean of the inputs the ImageNet weights were trained on (0..1 scale).
        std: per-channel standard deviation of those inputs.
        imagenet: whether ImageNet weights have been released for this encoder.
        generic: named by ``backbone.encoder`` rather than by the table: its levels are checked
            against what each architecture needs, and it is dilated with timm's own
            ``output_stride`` where the model takes one (the table's backbones keep segfw's
            à-trous routine, tested equal to torchvision's and timm's).
    """

    encoder: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    imagenet: bool = True
    generic: bool = False

    @property
    def label(self) -> str:
        """The encoder as a user names it in messages (without SMP's ``tu-`` prefix)."""
        return self.encoder.removeprefix("tu-")


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

# The generic encoders docs/models.md starts from; offered when a misspelt encoder name resembles
# no timm name, and listed by a bare `python -m segfw.models --encoders`.
SUGGESTED_ENCODERS = (
    "convnext_tiny",
    "efficientnet_b0",
    "regnety_016",
    "resnet50d",
    "mit_b0",
    "mobilenetv3_large_100",
)


def get_backbone(name: str) -> Backbone:
    """Looks a named backbone up (``backbone.name``; ``timm``: see :func:`backbone_spec`).

    Raises:
        ConfigError: the name is not in the table; the message lists the choices.
    """
    return choose(BACKBONES, name, "backbone.name")


def backbone_spec(backbone: Mapping[str, Any]) -> Backbone:
    """The backbone a ``backbone`` config describes.

    Args:
        backbone: ``name`` (a table entry or ``timm``), ``weights``, and for ``timm`` the
            ``encoder``.

    Raises:
        ConfigError: unknown name, encoder or setting; the message lists what is accepted.
    """
    settings = dict(backbone)
    name = settings.pop("name", None)
    settings.pop("weights", None)
    if name != TIMM:
        choose([*BACKBONES, TIMM], name, "backbone.name")
        check_arguments(get_backbone, settings, "backbone", skip=1, also=("name", "weights"))
        return BACKBONES[name]
    check_arguments(timm_backbone, settings, "backbone", also=("name", "weights"))
    if settings.get("encoder") is None:
        raise ConfigError(
            f"backbone=timm needs backbone.encoder: the name of a timm model, e.g. "
            f"backbone.encoder=convnext_tiny ({LISTING_HINT})."
        )
    return timm_backbone(settings["encoder"])


def timm_backbone(encoder: str) -> Backbone:
    """A timm model (or one of SMP's ``mit_b*``) as a backbone.

    Args:
        encoder: the timm model's name, optionally with a pretrained tag
            (``convnext_tiny.fb_in1k``): ``backbone.weights=imagenet`` then loads those weights,
            and the input statistics are theirs.

    Raises:
        ConfigError: no timm model (or tag) has that name; the message lists the closest.
    """
    if encoder in MIT_ENCODERS:
        return Backbone(encoder, generic=True)
    if not isinstance(encoder, str) or not timm.is_model(encoder):
        names = [*timm.list_models(), *MIT_ENCODERS]
        close = difflib.get_close_matches(str(encoder), names, n=6) or list(SUGGESTED_ENCODERS)
        choose(close, encoder, "backbone.encoder", f"timm has no such model ({LISTING_HINT})")
    architecture, tag = split_model_name_tag(encoder)
    if tag:  # weights of its own: timm must publish that tag for that model
        tags = timm.list_pretrained(f"{architecture}.*") or [architecture]
        choose(tags, encoder, "backbone.encoder", f"timm has no such weights ({LISTING_HINT})")
    config = get_pretrained_cfg(encoder)
    # timm's default configuration where a model has none of its own (a few research models).
    mean = tuple(config.mean) if config else IMAGENET_MEAN
    std = tuple(config.std) if config else IMAGENET_STD
    released = bool(config and config.has_weights)
    return Backbone(f"tu-{encoder}", mean, std, imagenet=released, generic=True)
