"""Tiny datasets in the real on-disk layouts, written by the tests.

Every image shows its classes: each pixel is painted in ``COLOURS[class]`` (``COLOURS[ignore]`` for
ignored pixels), so a test can check that a loaded mask says the class its image shows, which
catches a wrong label mapping (Cityscapes ids, ADE20K's reduced zero) or a misaligned pair.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segfw.visualize import default_palette

COLOURS = default_palette(257)[1:]  # a distinct colour per mask value, none black
VOC_PALETTE = default_palette(256)  # VOC's colour map
SIZE = (48, 64)  # height, width: smaller than the 64 x 64 test input, so padding is exercised


def blocks(rng: np.random.Generator, values: list[int], size=SIZE, block: int = 8) -> np.ndarray:
    """A uint8 (H, W) map of ``block``-pixel squares, each holding one of ``values``."""
    height, width = size
    small = rng.choice(values, (height // block, width // block)).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def paint(classes: np.ndarray) -> np.ndarray:
    """The RGB image of a class-index map: each class in its own colour."""
    return COLOURS[classes]


def save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = []
    if path.suffix == ".jpg":  # full-resolution chroma (4:4:4): true colours up to class borders
        options = [cv2.IMWRITE_JPEG_QUALITY, 98, cv2.IMWRITE_JPEG_SAMPLING_FACTOR]
        options += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), options)


def save_mask(path: Path, values: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A single-channel PNG: grey (mode L), or palette (mode P) when a palette is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if palette is None else "P"
    image = Image.frombytes(mode, values.shape[::-1], np.ascontiguousarray(values).tobytes())
    if palette is not None:
        image.putpalette(palette.astype(np.uint8).ravel().tolist())
    image.save(path)


def write_voc(base: Path, ids: dict[str, list[str]], sbd: list[str] = ()) -> Path:
    """``base/VOCdevkit/VOC2012`` with palette masks (classes 0..20, a 255 border per object).

    Args:
        base: where to put ``VOCdevkit``.
        ids: split name -> IDs listed in ``ImageSets/Segmentation/<split>.txt``.
        sbd: IDs that only ``SegmentationClassAug`` (grey masks) and ``train_aug.txt`` hold.
    """
    root = base / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(1)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, names in ids.items():
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in names))
    everything = dict.fromkeys(i for names in ids.values() for i in names)
    for n, image_id in enumerate([*everything, *sbd]):
        size = SIZE if n % 2 else (40, 56)  # two sizes: whole-image batches need padding
        mask = blocks(rng, [0, 0, 5, 15, 20], size)
        mask[cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3))) > 0] = 255
        save_rgb(root / "JPEGImages" / f"{image_id}.jpg", paint(mask))
        if image_id in everything:
            save_mask(root / "SegmentationClass" / f"{image_id}.png", mask, VOC_PALETTE)
        else:
            save_mask(root / "SegmentationClassAug" / f"{image_id}.png", mask)
    if sbd:
        (lists / "train_aug.txt").write_text("".join(f"{i}\n" for i in [*sbd, *everything]))
    return root


# Cityscapes label ids drawn in the test masks -> the class index they must become.
CITYSCAPES_IDS = {7: 0, 8: 1, 26: 13, 33: 18, 0: 255, 4: 255, 29: 255}


def write_cityscapes(root: Path, counts: dict[str, int]) -> Path:
    """``leftImg8bit/<split>/<city>/`` and ``gtFine/<split>/<city>/`` with labelIds masks."""
    rng = np.random.default_rng(2)
    lut = np.zeros(256, np.uint8)
    for label_id, index in CITYSCAPES_IDS.items():
        lut[label_id] = index
    for split, count in counts.items():
        for n in range(count):
            city = ("aachen", "bremen")[n % 2]
            stem = f"{city}_{n:06d}_000019"
            ids = blocks(rng, list(CITYSCAPES_IDS))
            save_rgb(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", paint(lut[ids])
            )
            save_mask(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
            # The colour rendering beside it must not be taken for a mask.
            save_rgb(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", paint(ids))
    return root


def write_ade20k(base: Path, counts: dict[str, int]) -> Path:
    """``base/ADEChallengeData2016`` with annotations 0 ("other") and 1..150."""
    root = base / "ADEChallengeData2016"
    rng = np.random.default_rng(3)
    for split, count in counts.items():
        for n in range(count):
            raw = blocks(rng, [0, 1, 2, 75, 150])
            classes = np.where(raw == 0, 255, raw - 1).astype(np.uint8)
            name = f"ADE_{split}_{n:08d}"
            save_rgb(root / "images" / split / f"{name}.jpg", paint(classes))
            save_mask(root / "annotations" / split / f"{name}.png", raw)
    return root


def write_camvid(root: Path, counts: dict[str, int]) -> Path:
    """``<split>/`` and ``<split>annot/`` with class indices 0..10 and void 11."""
    rng = np.random.default_rng(4)
    for split, count in counts.items():
        for n in range(count):
            mask = blocks(rng, [0, 3, 8, 10, 11])
            save_rgb(root / split / f"0001TP_{n:06d}.png", paint(mask))
            save_mask(root / f"{split}annot" / f"0001TP_{n:06d}.png", mask)
    return root


def write_painted_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    """A ``data=folder`` dataset of lossless PNGs: class indices 0..2, images painted by class.

    Args:
        root: the dataset root.
        sizes: split -> (height, width) of each image.
    """
    rng = np.random.default_rng(6)
    for split, shapes in sizes.items():
        for n, size in enumerate(shapes):
            mask = blocks(rng, [0, 1, 2], size)
            save_rgb(root / "images" / split / f"img{n}.png", paint(mask))
            save_mask(root / "masks" / split / f"img{n}.png", mask)
    return root


# Colour-coded folder masks: three classes and one "unlabelled" colour.
FOLDER_COLOURS = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
FOLDER_IGNORE = [255, 255, 255]


def write_colour_folder(root: Path, counts: dict[str, int]) -> Path:
    """``images/<split>/`` with ``masks/<split>/`` painted in ``FOLDER_COLOURS``."""
    rng = np.random.default_rng(5)
    table = np.array([*FOLDER_COLOURS, FOLDER_IGNORE], np.uint8)
    for split, count in counts.items():
        for n in range(count):
            code = blocks(rng, [0, 1, 2, 3])  # 3: unlabelled
            classes = np.where(code == 3, 255, code).astype(np.uint8)
            save_rgb(root / "images" / split / f"img{n}.png", paint(classes))
            save_rgb(root / "masks" / split / f"img{n}.png", table[code])
    return root


def colour_mismatches(
    image: np.ndarray, mask: np.ndarray, labels: list[int], margin: int = 1
) -> int:
    """Pixels whose colour is nearer another label's colour than their own mask label's.

    Only pixels at least ``margin`` pixels from a class border of the mask count: JPEG and
    bilinear resampling blend the image's colours there, while the mask takes the nearest label.

    Args:
        image: RGB (H, W, 3).
        mask: (H, W) labels, each one of ``labels``.
        labels: the mask values that may occur.
        margin: pixels left out on either side of each class border.
    """
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    uniform = cv2.erode(mask, kernel) == cv2.dilate(mask, kernel)
    colours = COLOURS[labels].astype(int)  # (L, 3)
    distance = np.abs(image[..., None, :].astype(int) - colours).sum(axis=-1)  # (H, W, L)
    nearest = np.asarray(labels)[distance.argmin(axis=-1)]
    return int(((nearest != mask) & uniform).sum())
