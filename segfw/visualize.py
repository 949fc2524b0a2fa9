"""Pictures for the dashboards: masks in the class palette, image | truth | prediction strips and
confusion-matrix figures, drawn with numpy and Pillow (no plotting library needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

# PASCAL VOC's colour for its unlabelled (255) pixels; default_palette never gives it to a class.
IGNORE_COLOR = (224, 224, 192)
# White columns between the panels of a strip.
GAP = 2


def default_palette(num_classes: int) -> np.ndarray:
    """PASCAL VOC's colour map: distinct colours, class 0 black, for datasets without a palette.

    The bits of the class index are spread over the high bits of R, G and B (three at a time), so
    neighbouring classes get far-apart colours.

    Returns:
        uint8 array (num_classes, 3).
    """
    colors = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value = index
        for bit in range(7, -1, -1):
            for channel in range(3):
                colors[index, channel] |= ((value >> channel) & 1) << bit
            value >>= 3
    return colors


def checkpoint_palette(hparams: Mapping[str, Any]) -> np.ndarray:
    """The class colours a SegmentationModule was trained with (``data.palette``), or
    :func:`default_palette` when its data had none; uint8 (num_classes, 3)."""
    palette = hparams.get("palette")
    if palette is None:
        return default_palette(hparams["num_classes"])
    return np.asarray(palette, dtype=np.uint8)


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """uint8 class-index mask (H, W) -> RGB (H, W, 3); indices beyond the palette get IGNORE_COLOR."""
    lookup = np.tile(np.array(IGNORE_COLOR, dtype=np.uint8), (256, 1))
    lookup[: len(palette)] = palette
    return lookup[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with each pixel's class colour blended in at weight ``alpha``
    (mask values beyond the palette, such as ``ignore_index``, in IGNORE_COLOR)."""
    # addWeighted blends uint8 to uint8 without a float copy of a possibly huge image.
    return cv2.addWeighted(image, 1 - alpha, colorize(mask, palette), alpha, 0)


# The error map's colours: right, wrong, and ignored (left out of the scores) pixels. Magenta is
# in none of the dataset palettes segfw ships.
RIGHT_COLOR = (40, 40, 40)
WRONG_COLOR = (255, 0, 255)
ERROR_MAP_LEGEND = "error map: dark grey = right, magenta = wrong, beige = ignored"


def error_map(target: np.ndarray, prediction: np.ndarray, ignore_index: int) -> np.ndarray:
    """RGB (H, W, 3): each pixel RIGHT_COLOR where the prediction equals the label, WRONG_COLOR
    where it does not, IGNORE_COLOR where the label is ``ignore_index``."""
    picture = np.where((prediction == target)[..., None], RIGHT_COLOR, WRONG_COLOR)
    picture[target == ignore_index] = IGNORE_COLOR
    return picture.astype(np.uint8)


def captioned_rows(rows: Sequence[tuple[str, np.ndarray]], width: int | None = None) -> np.ndarray:
    """RGB pictures stacked top to bottom, each under a line of caption text, on white.

    Args:
        rows: (caption, RGB uint8 picture) of each row.
        width: the canvas width; ``None``: the widest picture's.
    """
    font = ImageFont.load_default(size=13)
    line = 18
    width = width or max(picture.shape[1] for _, picture in rows)
    height = sum(line + picture.shape[0] + GAP for _, picture in rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for caption, picture in rows:
        draw.text((2, top + 2), caption, fill="black", font=font)
        canvas.paste(Image.fromarray(picture), (0, top + line))
        top += line + picture.shape[0] + GAP
    return np.asarray(canvas)


def shrink(image: np.ndarray, max_size: int, nearest: bool) -> np.ndarray:
    """``image`` scaled down so that its longer side is at most ``max_size`` pixels.

    Args:
        image: (H, W) or (H, W, 3) uint8.
        max_size: the longest side allowed.
        nearest: nearest-neighbour sampling, for masks (class indices must not blend).
    """
    height, width = image.shape[:2]
    scale = max_size / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BOX
    return np.asarray(Image.fromarray(image).resize(size, resample))


def sample_strip(
    image: np.ndarray,
    target: np.ndarray,
    prediction: np.ndarray,
    palette: np.ndarray,
    ignore_index: int | None = None,
) -> np.ndarray:
    """Image | ground truth | prediction side by side, the masks in the class palette; with
    ``ignore_index``, also the error map (:func:`error_map`).

    Args:
        image: RGB uint8 (H, W, 3).
        target: class indices uint8 (H, W); ignored pixels drawn in IGNORE_COLOR.
        prediction: class indices uint8 (H, W).
        palette: uint8 (num_classes, 3).
        ignore_index: the label of ignored pixels; ``None``: no error map.

    Returns:
        uint8 (H, 3 W + 2 GAP, 3), or (H, 4 W + 3 GAP, 3) with the error map.
    """
    gap = np.full((image.shape[0], GAP, 3), 255, dtype=np.uint8)
    panels = [image, gap, colorize(target, palette), gap, colorize(prediction, palette)]
    if ignore_index is not None:
        panels += [gap, error_map(target, prediction, ignore_index)]
    return np.concatenate(panels, axis=1)


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> np.ndarray:
    """A confusion matrix as a heat map, each row normalized to 100% of its ground-truth pixels.

    A cell (i, j) is the share of class i's pixels predicted as j: the diagonal is each class's
    recall; a class with no labelled pixels shows an empty row.

    Args:
        confusion: (C, C) pixel counts, rows ground truth, columns prediction.
        class_names: C names, for the axes.
        title: drawn above the matrix.

    Returns:
        RGB uint8 (H, W, 3).
    """
    counts = np.asarray(confusion, dtype=np.float64)
    num_classes = len(class_names)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)

    # Cells shrink with the class count so that 150 classes still fit in ~1000 px; numbers are
    # printed only while they fit in a cell.
    cell = int(np.clip(720 // max(num_classes, 1), 6, 48))
    label_font = ImageFont.load_default(size=min(14, max(8, cell - 4)))
    number_font = ImageFont.load_default(size=max(8, cell * 3 // 8))
    title_font = ImageFont.load_default(size=15)
    pad = 8
    label_width = int(max(label_font.getlength(name) for name in class_names)) + pad
    axis_height = 18

    left = pad + axis_height + label_width
    top = pad + 24 + axis_height + label_width
    width = left + num_classes * cell + pad
    height = top + num_classes * cell + pad
    canvas = Image.new(
        "RGB", (max(width, int(title_font.getlength(title)) + 2 * pad), height), "white"
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), title, fill="black", font=title_font)

    # White (0%) to dark blue (100%).
    low, high = np.array([255, 255, 255]), np.array([8, 48, 107])
    for i in range(num_classes):
        for j in range(num_classes):
            x, y = left + j * cell, top + i * cell
            color = tuple(int(c) for c in low + (high - low) * shares[i, j])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=(235, 235, 235))
            if cell >= 20 and totals[i, 0] > 0:
                text = f"{100 * shares[i, j]:.0f}"
                ink = "white" if shares[i, j] > 0.5 else "black"
                draw.text(
                    (x + cell / 2, y + cell / 2), text, fill=ink, font=number_font, anchor="mm"
                )

    for i, name in enumerate(class_names):
        middle = top + i * cell + cell / 2
        draw.text((left - pad / 2, middle), name, fill="black", font=label_font, anchor="rm")
    # Column names and the row axis title are drawn horizontally, then turned a quarter left to
    # read upwards.
    columns = Image.new("RGB", (label_width, num_classes * cell), "white")
    column_draw = ImageDraw.Draw(columns)
    for j, name in enumerate(class_names):
        middle = j * cell + cell / 2
        column_draw.text((pad / 2, middle), name, fill="black", font=label_font, anchor="lm")
    canvas.paste(columns.rotate(90, expand=True), (left, top - label_width))
    draw.text(
        (left + num_classes * cell / 2, top - label_width - axis_height / 2),
        "prediction",
        fill="black",
        font=label_font,
        anchor="mm",
    )
    axis = Image.new("RGB", (num_classes * cell, axis_height), "white")
    ImageDraw.Draw(axis).text(
        (num_classes * cell / 2, axis_height / 2),
        "ground truth",
        fill="black",
        font=label_font,
        anchor="mm",
    )
    canvas.paste(axis.rotate(90, expand=True), (pad, top))
    return np.asarray(canvas)
