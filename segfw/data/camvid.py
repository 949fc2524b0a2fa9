"""CamVid as the SegNet tutorial lays it out: ``<split>/`` images, ``<split>annot/`` masks.

The masks hold the 11 class indices 0..10 and 11 for void; ``segfw/conf/data/camvid.yaml`` sets
``ignore_index: 11``, so void is left out of loss and metrics without rewriting any mask.
"""

from __future__ import annotations

from segfw.data.dataset import DataSpec
from segfw.data.files import (
    FilePairs,
    IndexMasks,
    dataset_root,
    pair_with_png_masks,
    require,
)

LAYOUT = "root/<split>/NAME.png with root/<split>annot/NAME.png (class indices, 11 = void)"


def read_camvid(split: str, spec: DataSpec, root: str) -> FilePairs:
    """The images of one split of CamVid with their masks.

    Args:
        split: ``train``, ``val`` or ``test``.
        spec: unused by this format (CamVid masks are class indices already).
        root: the folder holding ``train/``, ``trainannot/``, ``val/``, ...

    Raises:
        ValueError: a folder is missing or empty.
    """
    root_path = dataset_root(root, LAYOUT)
    image_dir = require(root_path / split, root_path, LAYOUT)
    mask_dir = require(root_path / f"{split}annot", root_path, LAYOUT)
    pairs, problems = pair_with_png_masks(split, image_dir, mask_dir, LAYOUT, ".png")
    return FilePairs(pairs, IndexMasks(), problems)
