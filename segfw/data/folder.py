"""The folder format: ``root/images/<split>/NAME.(png|jpg)`` with ``root/masks/<split>/NAME.png``."""

from __future__ import annotations

from collections.abc import Sequence

from segfw.data.dataset import DataSpec
from segfw.data.files import (
    ColourMasks,
    FilePairs,
    IndexMasks,
    MaskFormat,
    dataset_root,
    pair_with_png_masks,
    require,
)
from segfw.errors import ConfigError

LAYOUT = (
    "root/images/<split>/NAME.png|jpg with root/masks/<split>/NAME.png "
    "(class indices, or colours listed in data.mask_colors)"
)


def read_folder(
    split: str,
    spec: DataSpec,
    root: str,
    mask_colors: Sequence[Sequence[int]] | None = None,
    ignore_colors: Sequence[Sequence[int]] = (),
) -> FilePairs:
    """Image/mask pairs read from a folder tree.

    Args:
        split: subfolder name, e.g. ``train``.
        spec: the label facts (``ignore_index`` for ``ignore_colors``).
        root: dataset root holding ``images/`` and ``masks/``.
        mask_colors: ``None``: masks hold class indices (grey or palette PNGs). Otherwise one
            [R, G, B] per class: masks are colour-coded, each pixel painted in its class's colour.
        ignore_colors: colours of colour-coded masks that mean "not labelled".

    Raises:
        ValueError: the root or split folder is missing, the split is empty, or the colour table
            does not fit the classes; the message names the files and the expected layout.
    """
    root_path = dataset_root(root, LAYOUT)
    image_dir = require(root_path / "images" / split, root_path, LAYOUT)
    mask_dir = require(root_path / "masks" / split, root_path, LAYOUT)
    if mask_colors is None:
        if ignore_colors:
            raise ConfigError(
                "data.ignore_colors is set but data.mask_colors is null: colours only mean "
                "something for colour-coded masks; list each class's colour in data.mask_colors."
            )
        masks: MaskFormat = IndexMasks()
    else:
        if len(mask_colors) != spec.num_classes:
            raise ConfigError(
                f"data.mask_colors has {len(mask_colors)} colours but data.num_classes="
                f"{spec.num_classes}; give one [R, G, B] per class, in class order."
            )
        masks = ColourMasks(mask_colors, ignore_colors, spec.ignore_index)
    pairs, problems = pair_with_png_masks(split, image_dir, mask_dir, LAYOUT, ".png/.jpg")
    return FilePairs(pairs, masks, problems)
