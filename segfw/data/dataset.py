"""Dataset: samples from a source, checked, transformed, as uint8 tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from segfw.data.problems import UNKNOWN_LABELS
from segfw.errors import DataError


@dataclass(frozen=True)
class DataSpec:
    """What a format's reader may need besides its own ``data.*`` keys.

    Attributes:
        height: network input height (``model.height``).
        width: network input width (``model.width``).
        num_classes: number of classes.
        ignore_index: mask value of pixels left out of loss and metrics.
    """

    height: int
    width: int
    num_classes: int
    ignore_index: int


class SampleSource(Protocol):
    """Where samples come from: files on disk or the procedural generator."""

    def __len__(self) -> int: ...

    def name(self, index: int) -> str:
        """The mask file (or generator address) of a sample, for error messages."""
        ...

    def image_path(self, index: int) -> str:
        """The image file (or generator address) of a sample, for reports."""
        ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """An RGB uint8 image (H, W, 3) and a uint8 class-index mask (H, W)."""
        ...

    def image_size(self, index: int) -> tuple[int, int]:
        """The (height, width) of a sample, without decoding it."""
        ...


class SegmentationDataset(Dataset):
    """Checks and transforms the samples of one split.

    Images are returned as uint8 (3, H, W) and masks as uint8 (H, W): normalization and the cast
    of the mask to int64 happen on the training device, which keeps host memory, pinned copies and
    host-to-device transfers four to eight times smaller.

    Args:
        source: the samples.
        transform: albumentations pipeline applied to image and mask together.
        num_classes: valid mask values are ``0 .. num_classes - 1`` and ``ignore_index``.
        ignore_index: mask value excluded from the loss and the metrics.
        random: the transform is random: each item is asked for as ``(index, seed)``
            (:class:`segfw.data.samplers.TrainingSampler`) and its augmentation drawn from that
            seed alone, so that it does not depend on which worker loads it or what that worker
            loaded before. A plain index draws from a seed of torch's generator.
    """

    def __init__(
        self,
        source: SampleSource,
        transform: A.Compose,
        num_classes: int,
        ignore_index: int,
        random: bool = False,
    ) -> None:
        self.source = source
        self.transform = transform
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.random = random

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image, mask = self.source.load(index)
        check_labels(mask, self.num_classes, self.ignore_index, self.source.name(index))
        if self.random:
            # albumentations keeps its own generators, blind to global seeds: seed them per item.
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            self.transform.set_random_seed(seed)
        out = self.transform(image=image, mask=mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])),
            "index": index,
        }


def check_labels(mask: np.ndarray, num_classes: int, ignore_index: int, name: str) -> np.ndarray:
    """Checks that every value of a mask is a class or ``ignore_index``; returns the pixels per
    mask value (256 bins), which the check counts anyway.

    Raises:
        DataError: the mask holds other values; the message names the sample.
    """
    # A bincount of 256 bins is the cheapest exact test of which values occur.
    histogram = np.bincount(mask.ravel(), minlength=256)
    present = np.flatnonzero(histogram)
    bad = [int(v) for v in present if v >= num_classes and v != ignore_index]
    if bad:
        raise DataError(
            f"Mask {name} holds values {bad}, outside the classes 0..{num_classes - 1} and "
            f"ignore_index={ignore_index}. Fix the mask, or set data.num_classes / "
            f"data.ignore_index to match your labels.",
            UNKNOWN_LABELS,
        )
    return histogram
