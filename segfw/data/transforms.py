"""Augmentation and resizing pipelines (albumentations), and the batching of whole images.

Image and mask always go through the same call, so every geometric step moves both alike; masks
are resampled with nearest-neighbour interpolation (a blend of class indices is not a class) and
padded with ``ignore_index``, so padding never counts as a class.
Colour steps touch the image alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import albumentations as A
import cv2

from segfw.choices import choose
from segfw.errors import ConfigError

EVAL_MODES = ("fit", "whole")
# Nearest neighbour for masks, sampled at pixel centres as bilinear resampling samples the image.
# OpenCV's plain INTER_NEAREST rounds coordinates down, which shifts a shrunk mask by up to half a
# source pixel towards the top left of its image.
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue", "p")


def train_transform(
    height: int,
    width: int,
    ignore_index: int,
    scale: Sequence[float] = (1.0, 1.0),
    hflip: bool = True,
    color_jitter: Mapping[str, float] | None = None,
) -> A.Compose:
    """Random scale, a random ``height x width`` crop, horizontal flip, colour jitter.

    Args:
        height: crop height (``model.height``).
        width: crop width (``model.width``).
        ignore_index: fill value of padded mask pixels.
        scale: [low, high] range of the random rescaling factor, relative to the image's own size;
            [1, 1] disables it. An image smaller than the crop after rescaling is padded (at a
            random place), its mask with ``ignore_index``.
        hflip: flip left-right with probability 0.5.
        color_jitter: ``brightness``, ``contrast``, ``saturation`` (each factor drawn from
            [1 - v, 1 + v]), ``hue`` (a shift drawn from [-v, v], in turns of the hue circle) and
            ``p`` (the probability of jittering an image); ``None`` disables it.

    Raises:
        ConfigError: a scale range or jitter setting that cannot work.
    """
    low, high = (float(s) for s in scale)
    if not 0 < low <= high:
        raise ConfigError(
            f"data.augment.scale={list(scale)} must be [low, high] with 0 < low <= high."
        )
    steps: list[A.BasicTransform] = []
    if (low, high) != (1.0, 1.0):
        steps.append(
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0), mask_interpolation=MASK_INTERPOLATION, p=1.0
            )
        )
    steps.append(
        A.RandomCrop(
            height,
            width,
            pad_if_needed=True,
            pad_position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        )
    )
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    if color_jitter is not None:
        steps.append(_color_jitter(color_jitter))
    return A.Compose(steps)


def _color_jitter(settings: Mapping[str, float]) -> A.ColorJitter:
    unknown = sorted(set(settings) - set(JITTER_KEYS))
    if unknown:
        raise ConfigError(
            f"data.augment.color_jitter has no setting {', '.join(unknown)}; it takes "
            f"{', '.join(JITTER_KEYS)}."
        )
    factors = {k: float(settings.get(k, 0.0)) for k in ("brightness", "contrast", "saturation")}
    hue = float(settings.get("hue", 0.0))
    if min(factors.values()) < 0 or not 0 <= hue <= 0.5:
        raise ConfigError(
            f"data.augment.color_jitter={dict(settings)}: brightness, contrast and saturation "
            f"must be >= 0, hue in 0..0.5."
        )
    return A.ColorJitter(
        **{k: (max(0.0, 1 - v), 1 + v) for k, v in factors.items()},
        hue=(-hue, hue),
        p=float(settings.get("p", 1.0)),
    )


class ShrinkToFit(A.LongestMaxSize):
    """Scales an image down, keeping its aspect ratio, until it fits ``max_size_hw``.

    Smaller images are left at their own size: enlarging them would show the network objects at a
    scale that training (random scale around the native size) rarely showed.
    """

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}


def eval_transform(height: int, width: int, ignore_index: int, mode: str = "fit") -> A.Compose:
    """The evaluation pipeline.

    Args:
        height: network input height.
        width: network input width.
        ignore_index: fill value of padded mask pixels, so padding is left out of the metrics.
        mode: ``fit``: shrink the image to fit ``height x width`` keeping its aspect ratio (never
            enlarge it), then pad it there at the bottom and right; scores are taken at that
            resolution. ``whole``: the image as it is, scored at the labels' full resolution
            (the module pads it to its network's input divisor).

    Raises:
        ConfigError: unknown mode.
    """
    choose(EVAL_MODES, mode, "data.eval_mode")
    if mode == "whole":
        return A.Compose([])
    return A.Compose(
        [
            ShrinkToFit(
                max_size_hw=(height, width),
                mask_interpolation=MASK_INTERPOLATION,
                area_for_downscale="image",
            ),
            A.PadIfNeeded(
                height,
                width,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            ),
        ]
    )
