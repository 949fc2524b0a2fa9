"""The embedded default dataset: procedurally drawn shapes on textured backgrounds.

Every sample is rendered from its own seed, so the dataset needs no files, is identical on every
machine, and its splits are disjoint by construction (each split draws from its own seed stream).
Shape colours are drawn independently of the class and the background carries coloured clutter, so
no colour threshold separates the classes: a model has to learn shape (corners, curvature) and
context (what is in front of what where shapes overlap).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from segfw.data.dataset import DataSpec
from segfw.errors import ConfigError

# Class index -> polygon corners: 1 circle (a fine polygon), 2 triangle, 3 square; 0 is background.
CORNERS = {1: 48, 2: 3, 3: 4}
# Circumradius scale per class, so that the three shapes cover about the same area (2 r^2 for the
# square; pi (0.85 r)^2 for the circle; 3 sqrt(3) / 4 (1.24 r)^2 for the triangle) and the classes
# stay balanced.
_AREA_BALANCE = {1: 0.85, 2: 1.24, 3: 1.0}

# Each split's samples come from a separate seed stream, so train, val and test never share an image.
_SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}

# Placements drawn for one shape before giving up on it (the image is already crowded).
_PLACEMENT_TRIES = 10


class ShapesSource:
    """Renders the shapes dataset's samples for one split.

    Args:
        split: ``train``, ``val`` or ``test``.
        size: number of samples in the split.
        height: image height in pixels.
        width: image width in pixels.
        seed: base seed; the same seed always gives the same images.
        min_shapes: fewest shapes drawn in one image.
        max_shapes: most shapes drawn in one image.
        noise_std: standard deviation of the Gaussian pixel noise, in 0..255 units.
        max_occlusion: largest fraction of a shape's visible pixels that a shape drawn over it may
            hide; placements that would hide more are drawn again, so that every shape keeps
            enough of its outline to be recognised.
    """

    def __init__(
        self,
        split: str,
        size: int,
        height: int,
        width: int,
        seed: int,
        min_shapes: int,
        max_shapes: int,
        noise_std: float,
        max_occlusion: float,
    ) -> None:
        if split not in _SPLIT_STREAM:
            raise ConfigError(
                f"The shapes dataset has splits {sorted(_SPLIT_STREAM)}; got split={split!r}."
            )
        if size < 1:
            raise ConfigError(
                f"The shapes dataset's {split} split is empty (size={size}); set it to 1 or more."
            )
        if height < 16 or width < 16:
            raise ConfigError(
                f"The shapes dataset draws images of at least 16x16 pixels; got {height}x{width}."
            )
        if not 1 <= min_shapes <= max_shapes:
            raise ConfigError(
                f"Need 1 <= min_shapes <= max_shapes; got min_shapes={min_shapes}, "
                f"max_shapes={max_shapes}."
            )
        self.split = split
        self.size = size
        self.height = height
        self.width = width
        self.seed = seed
        self.min_shapes = min_shapes
        self.max_shapes = max_shapes
        self.noise_std = noise_std
        self.max_occlusion = max_occlusion

    def __len__(self) -> int:
        return self.size

    def _hides_little(self, owner: np.ndarray, footprint: np.ndarray, count: int) -> bool:
        visible = np.bincount(owner.ravel(), minlength=count)[1:]
        hidden = np.bincount(owner[footprint], minlength=count)[1:]
        return bool(np.all(hidden <= self.max_occlusion * visible))

    def name(self, index: int) -> str:
        return f"shapes/{self.split}/{index:06d}"

    def image_size(self, index: int) -> tuple[int, int]:
        return self.height, self.width

    def image_path(self, index: int) -> str:
        return self.name(index)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns the ``index``-th sample as an RGB uint8 image (H, W, 3) and a uint8 mask (H, W)."""
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[self.split], index])
        image = _background(rng, self.height, self.width)
        mask = np.zeros((self.height, self.width), np.uint8)
        # Which shape owns each pixel (0: background), to measure how much a new shape hides.
        owner = np.zeros((self.height, self.width), np.uint8)
        for shape in range(1, int(rng.integers(self.min_shapes, self.max_shapes + 1)) + 1):
            class_id = int(rng.integers(1, len(CORNERS) + 1))
            for _ in range(_PLACEMENT_TRIES):
                polygon = _shape_polygon(rng, class_id, self.height, self.width)
                footprint = np.zeros_like(owner)
                cv2.fillPoly(footprint, [polygon], 1)
                if self._hides_little(owner, footprint.astype(bool), shape):
                    break
            else:
                continue  # no room left for another shape in this image
            colour = _contrasting_colour(rng, image, footprint.astype(bool))
            # Image and mask are filled from the same polygon, so every labelled pixel is drawn.
            cv2.fillPoly(image, [polygon], colour)
            cv2.fillPoly(mask, [polygon], class_id)
            owner[footprint.astype(bool)] = shape
        noise = rng.normal(0.0, self.noise_std, image.shape)
        image = np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        return image, mask


def read_shapes(
    split: str,
    spec: DataSpec,
    sizes: Mapping[str, int],
    seed: int = 0,
    min_shapes: int = 2,
    max_shapes: int = 5,
    noise_std: float = 12.0,
    max_occlusion: float = 0.5,
) -> ShapesSource:
    """The ``data.format=shapes`` reader: one split of the shapes dataset, drawn at the model's
    input size. ``sizes`` gives the number of images of each split; the other arguments are
    those of :class:`ShapesSource`."""
    if split not in sizes:
        raise ConfigError(f"data.sizes has no entry for split {split!r}; it has {dict(sizes)}.")
    return ShapesSource(
        split,
        sizes[split],
        spec.height,
        spec.width,
        seed=seed,
        min_shapes=min_shapes,
        max_shapes=max_shapes,
        noise_std=noise_std,
        max_occlusion=max_occlusion,
    )


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A colour gradient modulated by a sinusoidal texture, with coloured clutter strokes."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(angle) * xs / width + np.sin(angle) * ys / height + 1.0) / 2.0
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    image = start + (end - start) * ramp[..., None]
    wave_angle, period = rng.uniform(0, math.pi), rng.uniform(4, 16)
    phase = (np.cos(wave_angle) * xs + np.sin(wave_angle) * ys) * 2 * math.pi / period
    image += rng.uniform(5, 25) * np.sin(phase)[..., None]
    image = np.clip(image, 0, 255).astype(np.uint8)
    # Clutter: thin strokes and small blobs in shape-like colours that belong to the background.
    for _ in range(int(rng.integers(1, 4))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        if rng.random() < 0.5:
            p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.line(image, p0, p1, colour, int(rng.integers(1, 3)))
        else:
            cv2.circle(image, p0, int(rng.integers(1, 3)), colour, -1)
    return image


def _shape_polygon(rng: np.random.Generator, class_id: int, height: int, width: int) -> np.ndarray:
    """Vertices (int32, (K, 2) as x, y) of a randomly placed, sized and rotated shape."""
    side = min(height, width)
    radius = rng.uniform(0.18, 0.34) * side
    cx = rng.uniform(0.1, 0.9) * width
    cy = rng.uniform(0.1, 0.9) * height
    rotation = rng.uniform(0, 2 * math.pi)
    corners = CORNERS[class_id]
    radius *= _AREA_BALANCE[class_id]
    angles = rotation + np.arange(corners) * 2 * math.pi / corners
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return np.round(points).astype(np.int32)


def _contrasting_colour(
    rng: np.random.Generator, image: np.ndarray, region: np.ndarray
) -> tuple[int, int, int]:
    """A random colour that differs visibly from the mean colour under the shape."""
    under = image[region].mean(axis=0) if region.any() else image.mean(axis=(0, 1))
    for _ in range(20):
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - under).sum() > 120:
            break
    red, green, blue = (int(c) for c in colour)
    return red, green, blue
