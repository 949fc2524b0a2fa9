"""Training losses, built from the ``loss`` config; every one honours ``ignore_index``."""

from __future__ import annotations

from collections.abc import Sequence

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


def _class_weights(weights: Sequence[float] | None, num_classes: int) -> torch.Tensor | None:
    if weights is None:
        return None
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
