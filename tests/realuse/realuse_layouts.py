"""Each built-in dataset layout at its real image shapes, few images per split.

Sizes and file types are those of the real datasets (VOC's 500 x 375, 375 x 500 and 500 x 333
JPEGs, Cityscapes' 2048 x 1024 PNG frames, CamVid's 360 x 480 frames ...); only the counts are
small.
Every image shows its classes: each pixel is painted in its mask value's colour, with large
regions, so a network can learn from them and a wrong label mapping shows in the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segfw.visualize import default_palette

COLOURS = default_palette(257)[1:]  # a distinct colour per mask value, none black
VOC_PALETTE = default_palette(256)

# Regions are cells of about this many pixels: big enough to learn from, small enough that every
# image holds several classes.
CELL = 96


def regions(rng: np.random.Generator, values: list[int], size: tuple[int, int]) -> np.ndarray:
    """A uint8 (H, W) map of rectangular regions of about ``CELL`` pixels, each one of ``values``.

    Cells are resized nearest-neighbour onto the full size, so region borders fall at any pixel,
    not only at multiples of a divisor.
    """
    height, width = size
    cells = (max(2, round(height / CELL)), max(2, round(width / CELL)))
    small = rng.choice(values, cells).astype(np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


def save_rgb(path: Path, image: np.ndarray) -> None:
    """An RGB uint8 image as PNG or JPEG (quality 95, the usual camera/export setting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    options = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), options):
        raise OSError(f"cannot write {path}")


def save_mask(path: Path, values: np.ndarray, palette: np.ndarray | None = None) -> None:
    """A single-channel 8-bit PNG: grey (mode L), or palette (mode P) when a palette is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.uint8))  # mode L
    if palette is not None:
        image = image.convert("P")  # mode P keeps the index values; the palette is display only
        image.putpalette(palette.astype(np.uint8).ravel().tolist())
    image.save(path)


# (height, width) of VOC's JPEGs: mostly 500 x 375 and 375 x 500, some 500 x 333. The three
# validation images differ in size: evaluation then batches each alone, whatever the batch size,
# so its scores must match to the last bit (batched convolutions may round differently from
# unbatched ones, which would flip pixels whose two best classes tie).
VOC_SIZES = [(375, 500), (500, 375), (333, 500)]


def write_voc(base: Path, counts: dict[str, int]) -> Path:
    """``base/VOCdevkit/VOC2012`` as the development kit ships it.

    JPEGs of ``VOC_SIZES`` (both orientations in every split), palette PNG masks of
    classes 0..20 with VOC's 255 border (5 pixels) around every object, and
    ``ImageSets/Segmentation/<split>.txt``.

    Returns:
        The ``VOC2012`` folder.
    """
    root = base / "VOCdevkit" / "VOC2012"
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(11)
    for split, count in counts.items():
        ids = [f"2007_{split}{n:04d}" for n in range(count)]
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        for n, image_id in enumerate(ids):
            size = VOC_SIZES[n % len(VOC_SIZES)]
            classes = regions(rng, [0, 0, 1, 8, 12, 15], size)
            mask = classes.copy()
            border = cv2.morphologyEx(classes, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8))
            mask[border > 0] = 255
            save_rgb(root / "JPEGImages" / f"{image_id}.jpg", COLOURS[classes])
            save_mask(root / "SegmentationClass" / f"{image_id}.png", mask, VOC_PALETTE)
    return root


# (height, width) of ADE20K's images, which vary in size and aspect (short side about 512):
# landscape and portrait, no two of the first three alike (see VOC_SIZES).
ADE20K_SIZES = [(512, 683), (683, 512), (384, 512), (512, 768)]


def write_ade20k(base: Path, counts: dict[str, int]) -> Path:
    """``base/ADEChallengeData2016`` with JPEGs of ``ADE20K_SIZES`` and grey annotation PNGs
    of 0 ("other") and classes 1..150.

    Returns:
        The ``ADEChallengeData2016`` folder.
    """
    root = base / "ADEChallengeData2016"
    rng = np.random.default_rng(12)
    for split, count in counts.items():
        for n in range(count):
            size = ADE20K_SIZES[n % len(ADE20K_SIZES)]
            annotation = regions(rng, [0, 1, 3, 7, 13, 150], size)
            # Annotation k is class k - 1; "other" shows in a colour of its own.
            shown = np.where(annotation == 0, 255, annotation.astype(int) - 1)
            name = f"ADE_{split}_{n:08d}"
            save_rgb(root / "images" / split / f"{name}.jpg", COLOURS[shown])
            save_mask(root / "annotations" / split / f"{name}.png", annotation)
    return root


# Cityscapes label ids painted into the masks -> the train id they stand for (255: ignored in
# evaluation: unlabeled 0, static 4, parking 9).
CITYSCAPES_IDS = {7: 0, 8: 1, 11: 2, 21: 8, 23: 10, 24: 11, 26: 13, 0: 255, 4: 255, 9: 255}
CITYSCAPES_SIZE = (1024, 2048)


def write_cityscapes(root: Path, counts: dict[str, int]) -> Path:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` frames of 2048 x 1024 with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png`` (and the ``_color.png`` rendering beside
    them, which the reader must not take for a mask).

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(13)
    train_ids = np.zeros(256, np.int64)
    for label_id, train_id in CITYSCAPES_IDS.items():
        train_ids[label_id] = train_id
    cities = ("aachen", "bremen", "zurich")
    for split, count in counts.items():
        for n in range(count):
            city = cities[n % len(cities)]
            stem = f"{city}_{n:06d}_000019"
            label_ids = regions(rng, list(CITYSCAPES_IDS), CITYSCAPES_SIZE)
            image = COLOURS[train_ids[label_ids]]
            save_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            masks = root / "gtFine" / split / city
            save_mask(masks / f"{stem}_gtFine_labelIds.png", label_ids)
            save_rgb(masks / f"{stem}_gtFine_color.png", COLOURS[label_ids])
    return root


def write_camvid(root: Path, counts: dict[str, int]) -> Path:
    """The SegNet tutorial's CamVid: 360 x 480 PNG frames in ``<split>/``, masks of classes 0..10
    and void 11 in ``<split>annot/``.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(14)
    for split, count in counts.items():
        for n in range(count):
            mask = regions(rng, [0, 1, 3, 4, 8, 11], (360, 480))
            name = f"0016E5_{n:05d}.png"
            save_rgb(root / split / name, COLOURS[mask])
            save_mask(root / f"{split}annot" / name, mask)
    return root


# Folder images come as users have them: (file kind, (height, width)), cycled through.
FOLDER_IMAGES = [
    ("jpg", (480, 640)),
    ("grey", (640, 480)),
    ("palette", (375, 500)),
    ("grey16", (480, 640)),
    ("png", (500, 375)),
]
FOLDER_CLASSES = ["background", "road", "car"]


def write_folder(root: Path, counts: dict[str, int]) -> Path:
    """A ``data=folder`` dataset of three classes, its images in every kind the reader takes:
    RGB JPEG and PNG, 8-bit grey, palette and 16-bit grey PNGs, in both orientations; masks as
    grey or palette PNGs of class indices with 255 (ignored) pixels.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(15)
    for split, count in counts.items():
        for n in range(count):
            kind, size = FOLDER_IMAGES[n % len(FOLDER_IMAGES)]
            mask = regions(rng, [0, 1, 2, 255], size)
            rgb = COLOURS[mask]
            name = f"{split}_{n:03d}"
            folder = root / "images" / split
            folder.mkdir(parents=True, exist_ok=True)
            if kind in ("jpg", "png"):
                save_rgb(folder / f"{name}.{kind}", rgb)
            elif kind == "palette":
                Image.fromarray(rgb).quantize(colors=8).save(folder / f"{name}.png")
            else:  # grey levels that still tell the classes apart
                grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
                if kind == "grey16":
                    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / f"{name}.png")
                else:
                    Image.fromarray(grey).save(folder / f"{name}.png")
            palette = VOC_PALETTE if n % 2 else None
            save_mask(root / "masks" / split / f"{name}.png", mask, palette)
    return root


@dataclass
class Layout:
    """A dataset written to disk (or the embedded one), as the commands take it.

    Attributes:
        overrides: ``data=<name>``, ``data.root=...`` and the keys the dataset requires.
        val_split: the validation split's own name (its folder or list file).
        val_images: the validation images in dataset order; ``None`` for the embedded data.
        val_count: number of validation images.
        whole: whether validation scores each image at its own size (``eval_mode: whole``)
            rather than shrunk to fit the model's input size.
    """

    overrides: list[str]
    val_split: str
    val_images: list[Path] | None
    val_count: int
    whole: bool


# A dozen optimizer steps (24 images, batches of 2) rather than one: after a single step the
# network predicts one class everywhere, and nothing (global pooling over padding included) could
# change its predictions; the batching test needs a network whose predictions context can move.
SOME_STEPS = "data.batch_size=2"


# Validation split sizes are odd, so that no even batching or sharding hides a leftover image.
def voc(base: Path) -> Layout:
    root = write_voc(base, {"train": 24, "val": 3})
    images = [root / "JPEGImages" / f"2007_val{n:04d}.jpg" for n in range(3)]
    return Layout(["data=voc", f"data.root={root}", SOME_STEPS], "val", images, 3, True)


def ade20k(base: Path) -> Layout:
    root = write_ade20k(base, {"training": 24, "validation": 3})
    images = sorted((root / "images" / "validation").glob("*.jpg"))
    # data.root may name the folder holding ADEChallengeData2016, as here.
    overrides = ["data=ade20k", f"data.root={base}", SOME_STEPS]
    return Layout(overrides, "validation", images, 3, True)


def cityscapes(base: Path) -> Layout:
    root = write_cityscapes(base, {"train": 2, "val": 2})
    images = sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))
    return Layout(["data=cityscapes", f"data.root={root}"], "val", images, 2, True)


def camvid(base: Path) -> Layout:
    root = write_camvid(base, {"train": 4, "val": 3, "test": 3})
    images = sorted((root / "val").glob("*.png"))
    return Layout(["data=camvid", f"data.root={root}"], "val", images, 3, True)


def folder(base: Path) -> Layout:
    root = write_folder(base, {"train": 5, "val": 3, "test": 3})
    images = sorted((root / "images" / "val").iterdir())
    # No data.class_names: the classes are named class_0 .. class_2, and the log says so.
    return Layout(
        ["data=folder", f"data.root={root}", "data.num_classes=3"], "val", images, 3, False
    )


def shapes(base: Path) -> Layout:
    sizes = ["data.sizes.train=16", "data.sizes.val=3", "data.sizes.test=3"]
    return Layout(["data=shapes", *sizes], "val", None, 3, False)


DATASETS = {
    "voc": voc,
    "ade20k": ade20k,
    "cityscapes": cityscapes,
    "camvid": camvid,
    "folder": folder,
    "shapes": shapes,
}
