"""Pascal VOC 2012 segmentation: ``JPEGImages/``, ``SegmentationClass/``, ``ImageSets/Segmentation/``.

The masks are palette PNGs whose pixel values are the class indices 0..20 (the palette is only how
they display) with 255 on the border drawn around every object, where the annotators were unsure.
"""

from __future__ import annotations

import logging
from pathlib import Path

from segfw.data.dataset import DataSpec
from segfw.data.files import FilePairs, IndexMasks, dataset_root, pair_files, require
from segfw.data.problems import MISSING_PAIR, Problem
from segfw.errors import ConfigError

log = logging.getLogger(__name__)

LAYOUT = (
    "root (VOC2012, or the VOCdevkit folder holding it)/JPEGImages/ID.jpg, "
    "root/SegmentationClass/ID.png (palette PNGs of class indices) and "
    "root/ImageSets/Segmentation/<split>.txt (one ID per line)"
)


def read_voc(
    split: str,
    spec: DataSpec,
    root: str,
    extra_ids: str | None = None,
    extra_masks: str = "SegmentationClassAug",
    extra_split: str = "train",
) -> FilePairs:
    """The images listed in ``ImageSets/Segmentation/<split>.txt``, with their masks.

    Args:
        split: a list file name without ``.txt``: ``train``, ``val``, ``trainval``.
        spec: unused by this format (VOC masks are class indices already).
        root: the ``VOC2012`` folder, or the ``VOCdevkit`` folder that holds it.
        extra_ids: a list file of more IDs for split ``extra_split``: the SBD-augmented training
            set (Hariharan et al., 2011), e.g. ``train_aug.txt``; relative to the root or absolute.
            IDs of ``ImageSets/Segmentation/val.txt`` are left out, so that no validation image is
            trained on; IDs the split lists already keep their VOC mask.
        extra_masks: the folder of the extra IDs' masks (index PNGs), relative to the root or
            absolute.
        extra_split: the split the extra IDs join.

    Raises:
        ValueError: a folder or list file is missing, or the split lists no IDs.
    """
    root_path = dataset_root(root, LAYOUT, inner="VOC2012")
    image_dir = require(root_path / "JPEGImages", root_path, LAYOUT)
    mask_dir = require(root_path / "SegmentationClass", root_path, LAYOUT)
    lists = require(root_path / "ImageSets" / "Segmentation", root_path, LAYOUT)
    list_file = require(lists / f"{split}.txt", root_path, LAYOUT, folder=False)
    ids = _read_ids(list_file)
    if not ids:
        raise ConfigError(f"The {split} split is empty: {list_file} lists no IDs.")
    pairs, problems = _pairs(ids, list_file, image_dir, mask_dir)
    if extra_ids is not None and split == extra_split:
        extra_list = require(_under(root_path, extra_ids), root_path, LAYOUT, folder=False)
        extra_mask_dir = require(_under(root_path, extra_masks), root_path, LAYOUT)
        val_file = lists / "val.txt"
        skipped = set(ids) | (set(_read_ids(val_file)) if val_file.is_file() else set())
        listed = _read_ids(extra_list)
        extra = [i for i in dict.fromkeys(listed) if i not in skipped]
        log.info(
            "%s: %d extra IDs join the %s split (%d left out: in %s, or already listed)",
            extra_list,
            len(extra),
            split,
            len(set(listed)) - len(extra),
            val_file.name,
        )
        extra_pairs, extra_problems = _pairs(extra, extra_list, image_dir, extra_mask_dir)
        pairs, problems = pairs + extra_pairs, problems + extra_problems
    return FilePairs(pairs, IndexMasks(), problems)


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _under(root: Path, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else root / candidate


def _pairs(
    ids: list[str], list_file: Path, image_dir: Path, mask_dir: Path
) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    images = {i: image_dir / f"{i}.jpg" for i in ids}
    masks = {i: mask_dir / f"{i}.png" for i in ids}
    absent = [i for i in ids if not images[i].is_file() and not masks[i].is_file()]
    problems = [
        Problem(
            MISSING_PAIR,
            f"{list_file} lists {i}, but neither {images[i]} nor {masks[i]} exists.",
        )
        for i in absent
    ]
    pairs, unpaired = pair_files(
        {i: p for i, p in images.items() if p.is_file()},
        {i: p for i, p in masks.items() if p.is_file()},
        expected_mask=lambda i: str(masks[i]),
        expected_image=lambda i: str(images[i]),
    )
    return pairs, problems + unpaired
