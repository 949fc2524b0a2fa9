"""Augmentation and resizing pipelines (albumentations); image and mask always move together."""

from __future__ import annotations

import albumentations as A
import cv2


def train_transform(
    height: int,
    width: int,
    ignore_index: int,
    hflip: bool = True,
    scale: tuple[float, float] = (1.0, 1.0),
) -> A.Compose:
    """Random scale, a random ``height x width`` crop (padding the mask with ``ignore_index``) and
    a horizontal flip.

    Args:
        height: crop height (``model.height``).
        width: crop width (``model.width``).
        ignore_index: fill value of padded mask pixels, so padding never counts as a class.
        hflip: flip left-right with probability 0.5.
        scale: range of the random rescaling factor; (1, 1) disables it.
    """
    steps: list[A.BasicTransform] = []
    if tuple(scale) != (1.0, 1.0):
        low, high = scale
        steps.append(A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0))
    steps += [
        A.PadIfNeeded(
            height, width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index
        ),
        A.RandomCrop(height, width),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps)


def eval_transform(height: int, width: int, ignore_index: int) -> A.Compose:
    """Scales the image to fit ``height x width`` keeping its aspect ratio, then pads it there.

    Padded mask pixels get ``ignore_index``, so they are left out of the metrics.
    """
    return A.Compose(
        [
            A.LongestMaxSize(max_size_hw=(height, width)),
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
