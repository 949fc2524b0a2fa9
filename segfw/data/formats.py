"""The table of dataset formats: ``data.format`` -> how to read one split's samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from segfw.choices import check_arguments, choose
from segfw.data.dataset import SampleSource
from segfw.data.folder import FolderSource
from segfw.data.synthetic import ShapesSource
from segfw.errors import ConfigError


def _shapes(
    split: str,
    height: int,
    width: int,
    sizes: Mapping[str, int],
    seed: int = 0,
    min_shapes: int = 2,
    max_shapes: int = 5,
    noise_std: float = 12.0,
) -> SampleSource:
    if split not in sizes:
        raise ConfigError(f"data.sizes has no entry for split {split!r}; it has {dict(sizes)}.")
    return ShapesSource(split, sizes[split], height, width, seed, min_shapes, max_shapes, noise_std)


def _folder(split: str, height: int, width: int, root: str) -> SampleSource:
    return FolderSource(root, split)


# Each reader takes (split, height, width, **its own data.* keys).
FORMATS: dict[str, Callable[..., SampleSource]] = {
    "shapes": _shapes,
    "folder": _folder,
}


def open_split(
    format: str, split: str, height: int, width: int, args: Mapping[str, Any]
) -> SampleSource:
    """Opens one split of a dataset.

    Raises:
        ValueError: unknown format, or a key its reader does not take (listing those it does).
    """
    reader = choose(FORMATS, format, "data.format")
    check_arguments(reader, args, "data", skip=3)
    return reader(split, height, width, **args)
