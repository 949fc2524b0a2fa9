"""Checking a split's files and measuring its classes.

Three depths, from cheap to thorough (``data.check`` picks the one training runs at start-up;
``python -m segfw.data.inspect`` always goes the whole way):

- ``files``: the listing: layout, image/mask pairing, empty splits. No file is opened.
- ``headers``: also opens each file's header (a few KB): unreadable files, image/mask size
  mismatches, masks in the wrong format (e.g. RGB where class indices are expected).
- ``full``: also decodes every image and mask: corrupt data and mask values that are neither a
  class nor ``ignore_index``, and counts the pixels of each class.

Whatever the depth, each sample is checked again as it is loaded, with the same messages, so a
problem the start-up check did not look for still stops training with the file named.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from segfw.data.dataset import SampleSource, check_labels
from segfw.data.files import FilePairs
from segfw.data.problems import Problem
from segfw.errors import DataError

log = logging.getLogger(__name__)

CHECKS = ("files", "headers", "full")


def header_problems(source: SampleSource) -> list[Problem]:
    """The problems a look at every file's header finds (none for generated samples)."""
    if not isinstance(source, FilePairs):
        return []
    problems = []
    for index in range(len(source)):
        try:
            source.check_header(index)
        except DataError as error:
            problems.append(Problem.of(error))
    return problems


@dataclass
class SplitScan:
    """What decoding every mask (and, optionally, image) of a split found.

    Attributes:
        samples: samples scanned.
        class_pixels: (num_classes,) pixels of each class.
        class_images: (num_classes,) samples in which each class occurs.
        image_pixels: (num_classes,) labelled pixels of the samples in which each class occurs:
            the denominator of median-frequency balancing.
        ignored_pixels: pixels equal to ``ignore_index``.
        min_size: smallest height and smallest width seen.
        max_size: largest height and largest width seen.
        problems: every problem found, one per file at fault.
    """

    samples: int
    class_pixels: np.ndarray
    class_images: np.ndarray
    image_pixels: np.ndarray
    ignored_pixels: int = 0
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None
    problems: list[Problem] = field(default_factory=list)


class _ScanItems(Dataset):
    """One item per sample: its mask's value histogram and size, or the problem it has."""

    def __init__(
        self, source: SampleSource, num_classes: int, ignore_index: int, images: bool
    ) -> None:
        self.source, self.num_classes, self.ignore_index = source, num_classes, ignore_index
        self.images = images

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[np.ndarray, tuple[int, int]] | Problem:
        try:
            if self.images or not isinstance(self.source, FilePairs):
                mask = self.source.load(index)[1]
            else:
                mask = self.source.load_mask(index)
            name = self.source.name(index)
            return check_labels(mask, self.num_classes, self.ignore_index, name), mask.shape
        except DataError as error:
            return Problem.of(error)


def _as_is(item):
    return item


def scan(
    source: SampleSource,
    num_classes: int,
    ignore_index: int,
    images: bool = True,
    workers: int = 0,
    label: str = "the split",
) -> SplitScan:
    """Decodes every mask of a split (and every image when ``images``), in ``workers`` processes.

    Args:
        source: the split's samples.
        num_classes: number of classes.
        ignore_index: the mask value of unlabelled pixels.
        images: decode the images too (finds corrupt images and decoded-size mismatches); the
            class counts need the masks alone.
        workers: DataLoader worker processes.
        label: what is scanned, for the log (e.g. "the train split").
    """
    items = _ScanItems(source, num_classes, ignore_index, images)
    # A private generator: scanning must not move the global RNG that seeds the model's weights.
    loader = DataLoader(
        items,
        batch_size=None,
        num_workers=workers,
        collate_fn=_as_is,
        generator=torch.Generator(),
    )
    result = SplitScan(
        samples=len(items),
        class_pixels=np.zeros(num_classes, np.int64),
        class_images=np.zeros(num_classes, np.int64),
        image_pixels=np.zeros(num_classes, np.int64),
    )
    start = time.perf_counter()
    log.info("scanning the %d samples of %s with %d worker(s)", len(items), label, workers)
    for item in loader:
        if isinstance(item, Problem):
            result.problems.append(item)
            continue
        histogram, size = item
        counts = histogram[:num_classes]
        present = counts > 0
        result.class_pixels += counts
        result.class_images += present
        result.image_pixels[present] += counts.sum()
        result.ignored_pixels += int(histogram[ignore_index])
        result.min_size = tuple(map(min, result.min_size or size, size))
        result.max_size = tuple(map(max, result.max_size or size, size))
    log.info("scanned %s in %.1f s", label, time.perf_counter() - start)
    return result
