"""ADE20K scene parsing (``ADEChallengeData2016``): ``images/<split>/`` JPEGs, ``annotations/<split>/``.

The annotation PNGs hold 0 for "other" (pixels outside the 150 benchmark classes) and 1..150 for
the classes. Here, once and only here, 0 becomes ``ignore_index`` and k becomes class k - 1 (the
step other frameworks call "reduce zero label"). Skipping it trains a 151st class out of "other"
and shifts every class by one; doing it twice (e.g. again in a custom pipeline) turns "wall" into
ignore and shifts the rest the other way. Either way per-class IoU is near 0: the classic symptom.
"""

from __future__ import annotations

from segfw.data.dataset import DataSpec
from segfw.data.files import (
    FilePairs,
    LabelIdMasks,
    dataset_root,
    pair_with_png_masks,
    require,
)

LAYOUT = (
    "root (ADEChallengeData2016, or the folder holding it)/images/<split>/NAME.jpg with "
    "root/annotations/<split>/NAME.png"
)


def read_ade20k(split: str, spec: DataSpec, root: str) -> FilePairs:
    """The images of one split of ADE20K, their annotations shifted to class indices.

    Args:
        split: ``training`` or ``validation``.
        spec: ``num_classes`` (150) and ``ignore_index`` (what label 0, "other", becomes).
        root: the ``ADEChallengeData2016`` folder, or the folder that holds it.

    Raises:
        ValueError: a folder is missing or empty.
    """
    table = {0: spec.ignore_index} | {k: k - 1 for k in range(1, spec.num_classes + 1)}
    masks = LabelIdMasks(
        table,
        f"0 = other, 1..{spec.num_classes} = the classes",
        "an ADE20K annotation PNG (8-bit grey)",
    )
    root_path = dataset_root(root, LAYOUT, inner="ADEChallengeData2016")
    image_dir = require(root_path / "images" / split, root_path, LAYOUT)
    mask_dir = require(root_path / "annotations" / split, root_path, LAYOUT)
    pairs, problems = pair_with_png_masks(split, image_dir, mask_dir, LAYOUT, ".jpg")
    return FilePairs(pairs, masks, problems)
