"""The folder format: ``root/images/<split>/NAME.(png|jpg)`` with ``root/masks/<split>/NAME.png``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segfw.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUT = (
    "root/images/<split>/NAME.png|jpg with root/masks/<split>/NAME.png "
    "(single-channel class indices)"
)


class FolderSource:
    """Image/mask pairs read from a folder tree.

    Args:
        root: dataset root holding ``images/`` and ``masks/``.
        split: subfolder name, e.g. ``train``.

    Raises:
        ValueError: the root or split folder is missing, the split is empty, or an image has no
            mask (or a mask no image); the message names the files and the expected layout.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"data.root={str(root)!r} does not exist. Expected the layout {LAYOUT}."
            )
        image_dir, mask_dir = root / "images" / split, root / "masks" / split
        for folder in (image_dir, mask_dir):
            if not folder.is_dir():
                raise ConfigError(
                    f"{folder} is missing: data.root={str(root)!r} is not laid out as expected. "
                    f"Expected {LAYOUT}."
                )
        images = {p.stem: p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
        if not images and not masks:
            raise ConfigError(
                f"The {split} split is empty: no .png/.jpg images in {image_dir}. "
                f"Expected {LAYOUT}."
            )
        _check_paired(images, masks, image_dir, mask_dir)
        self.names = sorted(images)
        self.images = [images[name] for name in self.names]
        self.masks = [masks[name] for name in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def name(self, index: int) -> str:
        return str(self.images[index])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns the RGB uint8 image (H, W, 3) and the uint8 mask (H, W) of one pair."""
        image_path, mask_path = self.images[index], self.masks[index]
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"Cannot read image {image_path}: not a readable PNG/JPEG file.")
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise ConfigError(f"Cannot read mask {mask_path}: not a readable PNG file.")
        if mask.ndim != 2 or mask.dtype != np.uint8:
            channels = 1 if mask.ndim == 2 else mask.shape[2]
            raise ConfigError(
                f"Mask {mask_path} has {channels} channel(s) of {mask.dtype}; expected a "
                f"single-channel 8-bit PNG whose pixel values are class indices."
            )
        if image.shape[:2] != mask.shape:
            raise ConfigError(
                f"Image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} "
                f"is {mask.shape[1]}x{mask.shape[0]} (width x height); they must match."
            )
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), mask


def _check_paired(
    images: dict[str, Path], masks: dict[str, Path], image_dir: Path, mask_dir: Path
) -> None:
    problems = []
    lonely_images = sorted(set(images) - set(masks))
    lonely_masks = sorted(set(masks) - set(images))
    if lonely_images:
        problems.append(
            f"{len(lonely_images)} image(s) without a mask in {mask_dir}: "
            + ", ".join(images[n].name for n in lonely_images[:5])
        )
    if lonely_masks:
        problems.append(
            f"{len(lonely_masks)} mask(s) without an image in {image_dir}: "
            + ", ".join(masks[n].name for n in lonely_masks[:5])
        )
    if problems:
        raise ConfigError(
            "; ".join(problems) + ". Every image needs a mask of the same name (NAME.png)."
        )
