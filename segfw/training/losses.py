"""Training losses, built from the ``loss`` config; every one honours ``ignore_index``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError


class WeightedSum(nn.Module):
    """``sum(weight * loss)`` over several losses, e.g. cross-entropy + Dice."""

    def __init__(self, terms: Sequence[tuple[nn.Module, float]]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(loss for loss, _ in terms)
        self.weights = [weight for _, weight in terms]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(
            w * loss(logits, target) for loss, w in zip(self.losses, self.weights, strict=True)
        )


def median_frequency_weights(
    class_pixels: Sequence[int], image_pixels: Sequence[int]
) -> list[float]:
    """Class weights by median-frequency balancing (Eigen & Fergus, ICCV 2015).

    ``freq[c] = class_pixels[c] / image_pixels[c]``: the share of class ``c`` among the labelled
    pixels of the images in which it occurs; ``weight[c] = median(freq) / freq[c]``, the median
    taken over the classes that occur. A class of median frequency weighs 1, rarer classes more.
    A class that never occurs gets 0: it has no pixel for a weight to act on.

    Args:
        class_pixels: pixels of each class over the training masks.
        image_pixels: labelled (not ignored) pixels of the training masks in which each class
            occurs.

    Returns:
        One weight per class, rounded to 6 significant digits (they are written into configs).
    """
    pixels = np.asarray(class_pixels, np.float64)
    frequency = np.divide(
        pixels, image_pixels, out=np.zeros_like(pixels), where=np.asarray(image_pixels) > 0
    )
    present = frequency > 0
    if not present.any():
        raise ConfigError(
            "loss.class_weights=auto: the training masks hold no labelled pixel to measure."
        )
    median = np.median(frequency[present])
    weights = np.divide(median, frequency, out=np.zeros_like(frequency), where=present)
    return [float(f"{w:.6g}") for w in weights]


def _class_weights(weights: Sequence[float] | str | None, num_classes: int) -> torch.Tensor | None:
    if weights is None:
        return None
    if isinstance(weights, str):
        raise ConfigError(
            f"loss.class_weights={weights!r}: give one number per class, or auto, which "
            f"segfw.commands.tasks.train resolves from the training masks before building the model."
        )
    if len(weights) != num_classes or min(weights) < 0:
        raise ConfigError(
            f"loss.class_weights={list(weights)} must hold {num_classes} non-negative numbers, "
            f"one per class."
        )
    return torch.tensor(weights, dtype=torch.float32)


def _ce(num_classes: int, ignore_index: int, class_weights: Sequence[float] | None = None):
    return nn.CrossEntropyLoss(
        weight=_class_weights(class_weights, num_classes), ignore_index=ignore_index
    )


def _dice(num_classes: int, ignore_index: int, smooth: float = 0.0):
    return smp_losses.DiceLoss("multiclass", ignore_index=ignore_index, smooth=smooth)


def _ce_dice(
    num_classes: int,
    ignore_index: int,
    class_weights: Sequence[float] | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
):
    return WeightedSum(
        [
            (_ce(num_classes, ignore_index, class_weights), ce_weight),
            (_dice(num_classes, ignore_index), dice_weight),
        ]
    )


def _focal(num_classes: int, ignore_index: int, gamma: float = 2.0):
    return smp_losses.FocalLoss("multiclass", gamma=gamma, ignore_index=ignore_index)


def _lovasz(num_classes: int, ignore_index: int, per_image: bool = False):
    return smp_losses.LovaszLoss("multiclass", per_image=per_image, ignore_index=ignore_index)


LOSSES = {"ce": _ce, "dice": _dice, "ce_dice": _ce_dice, "focal": _focal, "lovasz": _lovasz}


def build_loss(config: dict, num_classes: int, ignore_index: int) -> nn.Module:
    """Builds the loss that ``config`` (``name`` plus that loss's own keys) describes.

    Raises:
        ConfigError: unknown loss name or setting, or bad class weights.
    """
    args = dict(config)
    build = choose(LOSSES, args.pop("name", None), "loss.name")
    check_arguments(build, args, "loss", skip=2)
    return build(num_classes, ignore_index, **args)
