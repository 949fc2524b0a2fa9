"""A trained checkpoint as a predictor: images in, class-index masks at each image's size out.

    import segfw
    predictor = segfw.load("logs/runs/<run>/checkpoints/last.ckpt")
    mask = predictor.predict("photo.jpg")            # uint8 (H, W) class indices
    masks = predictor.predict([array, pil_image])    # one mask per image, each at its size

``predict.py`` is a loop over the same predictor, so both give the same masks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from segfw.data.files import read_image, rgb8
from segfw.errors import ConfigError
from segfw.inference.modes import build_inference, labels_at
from segfw.training.module import SegmentationModule, load_checkpoint

log = logging.getLogger(__name__)

# What predict() takes as one image.
ImageLike = np.ndarray | Image.Image | str | Path
# Larger images are predicted shrunk to this many pixels, their masks resized back (memory).
MAX_PIXELS = 8_388_608


class Predictor:
    """Predicts class-index masks with a trained module.

    Args:
        module: the trained module.
        inference: how images are covered, the ``inference`` settings (``segfw/conf/inference/``:
            ``mode`` whole or slide, ``resize``, ``crop``, ``stride``, ``flip``, ``scales``,
            ``batch_size``); ``None``: whole images shrunk to fit the model's input size.
            :meth:`from_checkpoint` chooses as the checkpoint was validated.
        device: ``auto`` (CUDA if available, else the CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
        batch_size: images read and predicted together.
        max_pixels: images with more pixels are predicted at a reduced size (area interpolation)
            and their masks resized back to full size; bounds memory.

    Raises:
        ConfigError: a setting out of range.
    """

    def __init__(
        self,
        module: SegmentationModule,
        inference: Mapping[str, Any] | None = None,
        device: str = "auto",
        batch_size: int = 4,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        if batch_size < 1 or max_pixels < 1:
            raise ConfigError(f"batch_size={batch_size} and max_pixels={max_pixels} must be >= 1.")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        model = module.hparams["model"]
        settings = dict(inference or {"mode": "whole", "resize": "shrink"})
        height, width = int(model["height"]), int(model["width"])
        self.inference = build_inference(settings, height, width, module.net.input_divisor)
        self.batch_size = batch_size
        self.max_pixels = max_pixels

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, inference: Mapping[str, Any] | None = None, **options: Any
    ) -> Predictor:
        """The predictor of a checkpoint written by ``train.py``.

        Args:
            path: the ``.ckpt`` file.
            inference: the ``inference`` settings (``segfw/conf/inference/``: ``mode`` whole or
                slide, ``resize``, ``crop``, ``stride``, ``flip``, ``scales``, ``batch_size``);
                ``None``: as the checkpoint was validated (:func:`as_validated`).
            **options: the other arguments of :class:`Predictor`.

        Raises:
            ConfigError: no checkpoint at ``path``, or a bad setting.
        """
        checkpoint = load_checkpoint(path)
        if inference is None:
            inference = as_validated(checkpoint)
            log.info("predicting as the checkpoint was validated: inference=%s", inference)
        return cls(SegmentationModule.from_checkpoint(checkpoint), inference, **options)

    def predict(
        self, images: ImageLike | list[ImageLike] | tuple[ImageLike, ...]
    ) -> np.ndarray | list[np.ndarray]:
        """Class-index masks, uint8 (H, W), each at its image's own size.

        Args:
            images: one image or a list of them: NumPy arrays (H, W, 3) RGB or (H, W) grey,
                uint8 or uint16, an alpha channel (H, W, 4) dropped; PIL images; or file paths.

        Returns:
            One mask for one image, a list of masks for a list.

        Raises:
            DataError: a file that cannot be read as an image, or pixels of an unusable type.
        """
        single = not isinstance(images, (list, tuple))
        batch: list[ImageLike] = list(images) if isinstance(images, (list, tuple)) else [images]
        masks = []
        for chunk in _chunks(batch, self.batch_size):
            masks += self.predict_arrays([as_rgb8(image) for image in chunk])
        return masks[0] if single else masks

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Masks for RGB uint8 images (H, W, 3), predicted together."""
        inputs = [
            torch.from_numpy(shrink_to(image, self.max_pixels)).permute(2, 0, 1).to(self.device)
            for image in images
        ]
        with torch.inference_mode():
            logits = self.inference.logits(self.module, inputs)
            return [
                labels_at(scores, image.shape[:2]).cpu().numpy()
                for image, scores in zip(images, logits, strict=True)
            ]


def as_validated(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The inference settings that cover an image as the checkpoint's validation did: whole
    images at their own size (``data.eval_mode=whole``), or shrunk to fit the model's input size
    (``fit``, and checkpoints that do not say)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    resize = "none" if data.get("eval_mode") == "whole" else "shrink"
    return {"mode": "whole", "resize": resize}


def as_rgb8(image: ImageLike) -> np.ndarray:
    """An image given to :meth:`Predictor.predict` as RGB uint8 (H, W, 3)."""
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    if isinstance(image, Image.Image):
        return rgb8(image, "the PIL image")
    array = np.asarray(image)
    if array.dtype == np.uint16:  # keep the high byte, as the image reader does
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ConfigError(
            f"An image array must be uint8 or uint16, (H, W) or (H, W, 3|4); got {array.dtype} "
            f"of shape {array.shape}."
        )
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def shrink_to(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """``image``, or a smaller copy (area interpolation) if it has more than ``max_pixels``
    pixels. Bounds memory: no inference mode then holds more than ``max_pixels`` x classes x 4
    bytes of logits (times the square of the largest test-time scale above 1)."""
    height, width = image.shape[:2]
    if height * width <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (height * width))
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def load(path: str | Path, inference: Mapping[str, Any] | None = None, **options: Any) -> Predictor:
    """``segfw.load``: the :class:`Predictor` of a checkpoint; see :meth:`Predictor.from_checkpoint`."""
    return Predictor.from_checkpoint(path, inference, **options)
