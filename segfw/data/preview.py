"""Preview grids: each image beside itself with its mask painted over in the class palette."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

IGNORE_COLOUR = (255, 255, 255)  # ignored pixels are painted white
TILE = 240  # pixels per tile side
FONT = cv2.FONT_HERSHEY_SIMPLEX


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: np.ndarray,
    ignore_index: int,
    alpha: float = 0.5,
) -> np.ndarray:
    """``image`` with each labelled pixel blended towards its class colour (ignore: white)."""
    colours = np.zeros((256, 3), np.float32)
    colours[: len(palette)] = palette
    colours[ignore_index] = IGNORE_COLOUR
    painted = image.astype(np.float32) * (1 - alpha) + colours[mask] * alpha
    return painted.round().astype(np.uint8)


def grid(
    samples: Sequence[tuple[np.ndarray, np.ndarray, str]],
    palette: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int,
    columns: int = 2,
) -> np.ndarray:
    """An RGB grid of (image, overlay) tile pairs with captions, and a legend of the classes shown.

    Args:
        samples: (RGB image, class-index mask, caption) of each sample.
        palette: (num_classes, 3) colours.
        class_names: one name per class, for the legend.
        ignore_index: the mask value drawn white.
        columns: image/overlay pairs per row.
    """
    pair_width = 2 * TILE
    rows = math.ceil(len(samples) / columns)
    canvas = np.full((rows * (TILE + 16), columns * pair_width, 3), 32, np.uint8)
    shown: set[int] = set()
    for i, (image, mask, caption) in enumerate(samples):
        top, left = (i // columns) * (TILE + 16), (i % columns) * pair_width
        painted = overlay(image, mask, palette, ignore_index)
        for offset, picture in ((0, image), (TILE, painted)):
            tile = _fit(picture)
            canvas[top : top + tile.shape[0], left + offset : left + offset + tile.shape[1]] = tile
        cv2.putText(
            canvas, caption[-40:], (left + 4, top + TILE + 12), FONT, 0.4, (220, 220, 220), 1
        )
        shown |= {int(v) for v in np.unique(mask)}
    return np.concatenate(
        [canvas, _legend(shown, palette, class_names, ignore_index, canvas.shape[1])]
    )


def _fit(picture: np.ndarray) -> np.ndarray:
    """``picture`` scaled to fit a TILE x TILE square, keeping its aspect ratio."""
    height, width = picture.shape[:2]
    scale = TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(
        picture, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    )


def _legend(
    shown: set[int],
    palette: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int,
    width: int,
) -> np.ndarray:
    entries = [
        (class_names[v], tuple(int(c) for c in palette[v]))
        for v in sorted(shown)
        if v < len(palette)
    ]
    if ignore_index in shown:
        entries.append((f"ignore ({ignore_index})", IGNORE_COLOUR))
    per_row = max(1, width // 200)
    legend = np.full((math.ceil(len(entries) / per_row) * 20 + 8, width, 3), 32, np.uint8)
    for i, (name, colour) in enumerate(entries):
        x, y = (i % per_row) * 200 + 6, (i // per_row) * 20 + 6
        cv2.rectangle(legend, (x, y), (x + 14, y + 14), colour, -1)
        cv2.putText(legend, name[:24], (x + 20, y + 12), FONT, 0.45, (230, 230, 230), 1)
    return legend
