"""Dataset: samples from a source, checked, transformed, as uint8 tensors."""

from __future__ import annotations

from typing import Protocol

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from segfw.errors import ConfigError


class SampleSource(Protocol):
    """Where samples come from: files on disk or the procedural generator."""

    def __len__(self) -> int: ...

    def name(self, index: int) -> str:
        """The file (or generator address) of a sample, for error messages."""
        ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """An RGB uint8 image (H, W, 3) and a uint8 class-index mask (H, W)."""
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
        random: draw the transform's randomness from torch's generator, so that
            ``seed_everything`` (and each DataLoader worker's seed) governs augmentation.
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

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask = self.source.load(index)
        self._check_mask(mask, index)
        if self.random:
            # albumentations keeps its own generator, blind to global seeds: reseed it from torch.
            self.transform.set_random_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        out = self.transform(image=image, mask=mask)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
            "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])),
            "index": index,
        }

    def _check_mask(self, mask: np.ndarray, index: int) -> None:
        # A bincount of 256 bins is the cheapest exact test of which values occur.
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
        bad = [int(v) for v in present if v >= self.num_classes and v != self.ignore_index]
        if bad:
            raise ConfigError(
                f"Mask of {self.source.name(index)} holds values {bad}, outside the classes "
                f"0..{self.num_classes - 1} and ignore_index={self.ignore_index}. Fix the mask, or "
                f"set data.num_classes / data.ignore_index to match your labels."
            )
