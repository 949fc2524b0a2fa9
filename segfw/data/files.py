"""Image and mask files on disk: reading, decoding masks into class indices, pairing, layout checks.

Shared by the readers of the on-disk formats (folder, voc, cityscapes, ade20k, camvid). Each mask
format says which PIL modes it accepts and how pixel values become class indices; the same code
reads a file's header at start-up (sizes, mode) and decodes it while training, so both report a
bad file with the same message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from segfw.data.problems import (
    MASK_FORMAT,
    MISSING_PAIR,
    SIZE_MISMATCH,
    UNKNOWN_LABELS,
    UNREADABLE,
    Problem,
)
from segfw.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class MaskFormat(Protocol):
    """How the mask files of a dataset encode classes."""

    modes: tuple[str, ...]  # PIL modes accepted
    colour: bool  # decode from RGB (colour-coded masks) rather than from single-channel values
    expected: str  # what a mask should be, for messages

    def decode(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        """uint8 (H, W) class indices (or ignore_index) from the file's pixels."""
        ...


class IndexMasks:
    """Masks whose pixel values are already class indices or ``ignore_index``.

    Palette PNGs (PIL mode "P", as Pascal VOC ships them) are read as their indices: the palette
    only says how to display them. 1-bit PNGs read as 0/1.
    """

    modes: tuple[str, ...] = ("L", "P", "1")
    colour = False
    expected = "a single-channel 8-bit PNG (grey or palette) whose pixel values are class indices"

    def decode(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        return pixels.astype(np.uint8, copy=False)


class LabelIdMasks(IndexMasks):
    """Masks of a dataset's own label ids, mapped to class indices through a lookup table.

    Args:
        table: label id -> class index (or ignore_index) for every id the dataset defines.
        defined: the ids the dataset defines, in words, for messages (e.g. "0..33").
        expected: what a mask of this dataset is, for messages.
    """

    def __init__(self, table: Mapping[int, int], defined: str, expected: str) -> None:
        self.lut = np.zeros(256, np.uint8)
        self.known = np.zeros(256, bool)
        for label_id, index in table.items():
            self.lut[label_id], self.known[label_id] = index, True
        self.defined = defined
        self.expected = expected

    def decode(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        # A 256-bin count finds the ids present faster than np.unique's sort.
        present = np.bincount(pixels.ravel(), minlength=256) > 0
        unknown = np.flatnonzero(present & ~self.known)
        if unknown.size:
            raise DataError(
                f"Mask {path} holds label ids {unknown.tolist()[:10]}, which the dataset does not "
                f"define ({self.defined}). Expected {self.expected}.",
                UNKNOWN_LABELS,
            )
        return self.lut[pixels]


class ColourMasks:
    """Colour-coded masks: each class painted in its own RGB colour, mapped through a table.

    Args:
        colours: one [R, G, B] per class, in class order.
        ignore_colours: colours that mean "not labelled"; they become ``ignore_index``.
        ignore_index: the mask value of ignored pixels.

    Raises:
        ConfigError: a colour that is not three 0..255 values, or listed twice.
    """

    modes: tuple[str, ...] = ("RGB", "RGBA", "P", "L")
    colour = True
    expected = "an RGB PNG whose colours are listed in data.mask_colors or data.ignore_colors"

    def __init__(
        self,
        colours: Sequence[Sequence[int]],
        ignore_colours: Sequence[Sequence[int]],
        ignore_index: int,
    ) -> None:
        table: dict[int, int] = {}
        entries = [(c, i, "mask_colors") for i, c in enumerate(colours)]
        entries += [(c, ignore_index, "ignore_colors") for c in ignore_colours]
        for colour, index, key in entries:
            if len(colour) != 3 or not all(0 <= int(v) <= 255 for v in colour):
                raise ConfigError(f"data.{key} holds {list(colour)}; give [R, G, B] in 0..255.")
            packed = _pack(np.array(colour, np.uint32))
            if int(packed) in table:
                raise ConfigError(
                    f"Colour {list(colour)} is listed twice in data.mask_colors / "
                    f"data.ignore_colors; each colour must mean one class."
                )
            table[int(packed)] = index
        order = sorted(table)
        self.keys = np.array(order, np.uint32)
        self.values = np.array([table[k] for k in order], np.uint8)

    def decode(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        packed = _pack(pixels.astype(np.uint32))
        position = np.minimum(np.searchsorted(self.keys, packed), len(self.keys) - 1)
        found = self.keys[position] == packed
        if not found.all():
            strange = np.unique(packed[~found])
            shown = ", ".join(str(_unpack(int(k))) for k in strange[:5])
            raise DataError(
                f"Mask {path} holds {strange.size} colour(s) that data.mask_colors and "
                f"data.ignore_colors do not list: {shown} (RGB), at {int((~found).sum())} "
                f"pixel(s). Add each colour to data.mask_colors (a class) or data.ignore_colors, "
                f"or repaint the mask.",
                UNKNOWN_LABELS,
            )
        return self.values[position]


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack(key: int) -> list[int]:
    return [key >> 16, (key >> 8) & 255, key & 255]


def read_image(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image: the one image reader of training, evaluation and prediction.

    Grey and palette images become RGB, an alpha channel is dropped, 16-bit images keep the high
    byte of each value. The EXIF orientation tag is ignored: masks are drawn on the stored pixel
    grid, and turning the image alone would misalign the pair (the start-up size check reads
    stored sizes too).

    Args:
        path: a PNG, JPEG or any other format Pillow reads.
        max_pixels: refuse larger images from their header, before anything is decoded;
            ``None``: Pillow's own guard against decompression bombs (about 179 megapixels).

    Raises:
        DataError: not a readable image, float pixels, or more than ``max_pixels`` pixels.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = None  # max_pixels is checked instead
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise DataError(
                    f"Image {path} is {width} x {height}, {width * height} pixels: more than the "
                    f"{max_pixels} allowed (max_image_pixels={max_pixels}; raise it to read it).",
                    UNREADABLE,
                )
            return rgb8(image, path)
    except (OSError, ValueError, SyntaxError) as error:
        if isinstance(error, DataError):
            raise
        # Pillow reports unknown formats and truncated files as OSError, some bad headers as
        # ValueError or SyntaxError.
        raise DataError(_unreadable_image(path), UNREADABLE) from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def rgb8(image: Image.Image, path: Path | str) -> np.ndarray:
    """A Pillow image as RGB uint8 (H, W, 3), converted as :func:`read_image` says; ``path``
    names it in messages."""
    if image.mode == "RGB":
        return np.array(image)
    if image.mode.startswith("I"):
        # 16-bit grey ("I;16*"; "I" is Pillow's 32-bit integer mode, which 16-bit files may open
        # as): keep the high byte of each value.
        pixels = np.asarray(image)
        grey = (np.clip(pixels, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise DataError(
            f"Image {path} has 32-bit float pixels, which have no standard 0..255 range; convert "
            f"it to 8 or 16 bits.",
            UNREADABLE,
        )
    return np.array(image.convert("RGB"))


def read_mask(path: Path, masks: MaskFormat) -> np.ndarray:
    """A uint8 (H, W) mask of class indices (or ignore_index), decoded as ``masks`` says."""
    try:
        with Image.open(path) as image:
            _check_mode(image, path, masks)
            pixels = np.array(image.convert("RGB") if masks.colour else image)
    except OSError:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(_unreadable_mask(path), UNREADABLE) from None
    return masks.decode(pixels, path)


def check_header(image_path: Path, mask_path: Path, masks: MaskFormat) -> tuple[int, int]:
    """Checks a pair from the file headers alone (a few KB): readable, same size, mask mode.
    Returns the pair's (height, width).

    Raises:
        DataError: naming the file at fault.
    """
    try:
        with Image.open(image_path) as image:
            image_size = image.size
    except OSError:
        raise DataError(_unreadable_image(image_path), UNREADABLE) from None
    try:
        with Image.open(mask_path) as mask:
            _check_mode(mask, mask_path, masks)
            mask_size = mask.size
    except OSError:
        raise DataError(_unreadable_mask(mask_path), UNREADABLE) from None
    if image_size != mask_size:
        raise DataError(_size_mismatch(image_path, image_size, mask_path, mask_size), SIZE_MISMATCH)
    return image_size[1], image_size[0]


def _check_mode(image: Image.Image, path: Path, masks: MaskFormat) -> None:
    if image.mode not in masks.modes:
        hint = ""
        if not masks.colour and image.mode in ("RGB", "RGBA"):
            hint = " For colour-coded masks of data=folder, list the colours in data.mask_colors."
        raise DataError(
            f"Mask {path} is a PIL mode {image.mode!r} image; expected {masks.expected}.{hint}",
            MASK_FORMAT,
        )


def _unreadable_image(path: Path) -> str:
    return f"Cannot read image {path}: not a readable image file."


def _unreadable_mask(path: Path) -> str:
    return f"Cannot read mask {path}: not a readable PNG file."


def _size_mismatch(
    image_path: Path, image_size: tuple[int, int], mask_path: Path, mask_size: tuple[int, int]
) -> str:
    return (
        f"Image {image_path} is {image_size[0]}x{image_size[1]} but its mask {mask_path} is "
        f"{mask_size[0]}x{mask_size[1]} (width x height); they must match."
    )


class FilePairs:
    """The image/mask pairs of one split of a dataset on disk.

    Args:
        pairs: (image path, mask path) of each sample.
        masks: how the mask files encode classes.
        problems: files found unpaired while listing; they are not in ``pairs``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        masks: MaskFormat,
        problems: Sequence[Problem] = (),
    ) -> None:
        self.pairs = list(pairs)
        self.masks = masks
        self.problems = list(problems)
        self._sizes: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][1])

    def image_path(self, index: int) -> str:
        return str(self.pairs[index][0])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The RGB uint8 image (H, W, 3) and the uint8 class-index mask (H, W) of one pair."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = read_mask(mask_path, self.masks)
        if image.shape[:2] != mask.shape:
            raise DataError(
                _size_mismatch(image_path, image.shape[1::-1], mask_path, mask.shape[::-1]),
                SIZE_MISMATCH,
            )
        return image, mask

    def load_mask(self, index: int) -> np.ndarray:
        """The class-index mask alone: what class statistics need, without decoding the image."""
        return read_mask(self.pairs[index][1], self.masks)

    def check_header(self, index: int) -> None:
        self._sizes[index] = check_header(*self.pairs[index], self.masks)

    def image_size(self, index: int) -> tuple[int, int]:
        """The (height, width) of a pair, from the image's header (kept from the start-up check
        when it ran)."""
        if index not in self._sizes:
            try:
                with Image.open(self.pairs[index][0]) as image:
                    self._sizes[index] = image.size[::-1]
            except OSError:
                raise DataError(_unreadable_image(self.pairs[index][0]), UNREADABLE) from None
        return self._sizes[index]


def pair_files(
    images: Mapping[str, Path],
    masks: Mapping[str, Path],
    expected_mask: Callable[[str], str],
    expected_image: Callable[[str], str],
) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pairs images and masks by sample name; each unpaired file becomes a problem.

    Args:
        images: sample name -> image file.
        masks: sample name -> mask file.
        expected_mask: where the mask of a sample name would be, for messages.
        expected_image: where the image of a sample name would be, for messages.
    """
    problems = [
        Problem(MISSING_PAIR, f"Image {images[n]} has no mask: expected {expected_mask(n)}.")
        for n in sorted(images.keys() - masks.keys())
    ]
    problems += [
        Problem(MISSING_PAIR, f"Mask {masks[n]} has no image: expected {expected_image(n)}.")
        for n in sorted(masks.keys() - images.keys())
    ]
    return [(images[n], masks[n]) for n in sorted(images.keys() & masks.keys())], problems


def pair_with_png_masks(
    split: str, image_dir: Path, mask_dir: Path, layout: str, usual_suffix: str
) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pairs each image of ``image_dir`` (any of IMAGE_SUFFIXES) with the PNG of the same name in
    ``mask_dir``; ``usual_suffix`` (e.g. ``.jpg``) is the image suffix that messages name.

    Raises:
        ConfigError: the split has neither images nor masks.
    """
    pairs, problems = pair_files(
        files_by_stem(image_dir, IMAGE_SUFFIXES),
        files_by_stem(mask_dir, (".png",)),
        expected_mask=lambda name: str(mask_dir / f"{name}.png"),
        expected_image=lambda name: str(image_dir / name) + usual_suffix,
    )
    where = f"no {usual_suffix} images in {image_dir}. Expected {layout}"
    require_samples(pairs, problems, split, where)
    return pairs, problems


def dataset_root(root: str | Path, layout: str, inner: str | None = None) -> Path:
    """``data.root`` as a Path, checked to exist.

    Args:
        root: the configured root.
        layout: the expected layout, for the message.
        inner: a folder name (e.g. ``VOC2012``) that a parent folder may hold; when ``root``
            holds it, the root is that folder.

    Raises:
        ConfigError: the root does not exist.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise ConfigError(f"data.root={str(path)!r} does not exist. Expected the layout {layout}.")
    if inner is not None and (path / inner).is_dir():
        return path / inner
    return path


def require(path: Path, root: Path, layout: str, folder: bool = True) -> Path:
    """``path``, or a ConfigError saying it is missing under the root and what was expected."""
    if not (path.is_dir() if folder else path.is_file()):
        raise ConfigError(
            f"{path} is missing: data.root={str(root)!r} is not laid out as expected. "
            f"Expected {layout}."
        )
    return path


def require_samples(pairs: Sequence, problems: Sequence[Problem], split: str, where: str) -> None:
    """A ConfigError when a split has neither samples nor unpaired files."""
    if not pairs and not problems:
        raise ConfigError(f"The {split} split is empty: {where}.")


def files_by_stem(folder: Path, suffixes: Sequence[str], strip: str = "") -> dict[str, Path]:
    """The files of ``folder`` with one of ``suffixes``, keyed by name without suffix and ``strip``."""
    files = {}
    for path in folder.iterdir():
        if path.suffix.lower() in suffixes and path.stem.endswith(strip):
            files[path.stem.removesuffix(strip) if strip else path.stem] = path
    return files
