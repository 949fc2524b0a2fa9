"""Cityscapes: ``leftImg8bit/<split>/<city>/`` images with ``gtFine/<split>/<city>/`` label ids.

The ``*_gtFine_labelIds.png`` masks hold the 34 Cityscapes label ids (0..33); training and the
benchmark use 19 of them. ``data.label_ids`` lists the label id of each class, in class order;
every other id (unlabeled, ego vehicle, parking, rail track, guard rail, caravan, ...) becomes
``ignore_index``, as the official evaluation does (cityscapesScripts, ``labels.py``: the ids with
``ignoreInEval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segfw.data.dataset import DataSpec
from segfw.data.files import (
    FilePairs,
    LabelIdMasks,
    dataset_root,
    pair_files,
    require,
    require_samples,
)
from segfw.errors import ConfigError

LAYOUT = (
    "root/leftImg8bit/<split>/<city>/NAME_leftImg8bit.png with "
    "root/gtFine/<split>/<city>/NAME_gtFine_labelIds.png"
)
# Cityscapes defines label ids 0..33 (and -1, license plate, which no labelIds PNG holds).
LABEL_IDS = range(34)
IMAGE_END, MASK_END = "_leftImg8bit.png", "_gtFine_labelIds.png"


def read_cityscapes(split: str, spec: DataSpec, root: str, label_ids: Sequence[int]) -> FilePairs:
    """The images of one split of Cityscapes, with their fine annotations.

    Args:
        split: ``train``, ``val`` or ``test`` (the test masks hold no labels).
        spec: ``num_classes`` (one label id each) and ``ignore_index`` (every other id).
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        label_ids: the Cityscapes label id of each class, in class order.

    Raises:
        ValueError: ``label_ids`` does not fit the classes, or a folder is missing or empty.
    """
    if len(label_ids) != spec.num_classes or len(set(label_ids)) != len(label_ids):
        raise ConfigError(
            f"data.label_ids={list(label_ids)} must list {spec.num_classes} distinct label ids, "
            f"one per class (data.class_names)."
        )
    if not set(label_ids) <= set(LABEL_IDS):
        raise ConfigError(f"data.label_ids={list(label_ids)}: Cityscapes label ids are 0..33.")
    table = {label_id: spec.ignore_index for label_id in LABEL_IDS}
    table |= {label_id: index for index, label_id in enumerate(label_ids)}
    masks = LabelIdMasks(
        table,
        "0..33",
        "a *_gtFine_labelIds.png of Cityscapes label ids (not _color or _instanceIds)",
    )
    root_path = dataset_root(root, LAYOUT)
    image_dir = require(root_path / "leftImg8bit" / split, root_path, LAYOUT)
    mask_dir = require(root_path / "gtFine" / split, root_path, LAYOUT)
    # Samples are named <city>/<city>_<sequence>_<frame>; the two trees share those names.
    images = {_name(p, image_dir, IMAGE_END): p for p in image_dir.glob(f"*/*{IMAGE_END}")}
    mask_files = {_name(p, mask_dir, MASK_END): p for p in mask_dir.glob(f"*/*{MASK_END}")}
    pairs, problems = pair_files(
        images,
        mask_files,
        expected_mask=lambda name: str(mask_dir / f"{name}{MASK_END}"),
        expected_image=lambda name: str(image_dir / f"{name}{IMAGE_END}"),
    )
    require_samples(
        pairs, problems, split, f"no <city>/*{IMAGE_END} in {image_dir}. Expected {LAYOUT}"
    )
    return FilePairs(pairs, masks, problems)


def _name(path: Path, folder: Path, ending: str) -> str:
    return str(path.relative_to(folder)).removesuffix(ending)
