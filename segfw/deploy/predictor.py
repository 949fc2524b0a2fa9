"""A trained checkpoint as a predictor: images in, class-index masks at each image's size out.

    import segfw
    predictor = segfw.load("logs/runs/<run>/checkpoints/last.ckpt")
    mask = predictor.predict("photo.jpg")            # uint8 (H, W) class indices
    masks = predictor.predict([array, pil_image])    # one mask per image, each at its size
    predictor.class_names, predictor.palette         # what each index means, and its colour

Layouts: NumPy arrays are channels-last, (H, W, 3) as PIL and OpenCV read images (OpenCV's BGR
order aside); torch tensors are channels-first, (3, H, W) or a batch (N, 3, H, W), as torch holds
images. Any other layout is refused, never guessed.

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
from segfw.visualize import checkpoint_palette

log = logging.getLogger(__name__)

# What predict() takes as one image.
ImageLike = np.ndarray | torch.Tensor | Image.Image | str | Path
# Channels an image may have: grey, RGB, RGB and alpha (dropped).
CHANNELS = (1, 3, 4)
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

    @property
    def class_names(self) -> list[str]:
        """What each class index of a mask means: the checkpoint's class names."""
        return list(self.module.hparams["class_names"])

    @property
    def palette(self) -> np.ndarray:
        """The colour of each class index, uint8 (num_classes, 3): the checkpoint's palette, as
        ``predict.py`` paints masks and overlays (a generated one when its data had none)."""
        return checkpoint_palette(self.module.hparams)

    def predict(
        self, images: ImageLike | list[ImageLike] | tuple[ImageLike, ...]
    ) -> np.ndarray | list[np.ndarray]:
        """Class-index masks, uint8 (H, W), each at its image's own size.

        Args:
            images: one image or a list (or tuple) of them: a file path (``str`` or ``Path``);
                a PIL image; a NumPy array channels-last, (H, W, 3) RGB, (H, W, 4) with alpha
                (dropped) or (H, W) grey, uint8 or uint16; a torch tensor channels-first,
                (3, H, W), (4, H, W), (1, H, W) or (H, W), uint8 or uint16, or a batch of them
                (N, C, H, W). Other layouts are refused: a (3, H, W) NumPy array is not guessed
                to be channels-first.

        Returns:
            One mask for one image; a list of masks for a list of images or a batch tensor.

        Raises:
            ConfigError: a path that does not exist, or an array or tensor of another layout or
                dtype.
            DataError: a file that cannot be read as an image.
        """
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            images = list(images)
        # A str is a sequence too: only a list or tuple is several images.
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
    """An image given to :meth:`Predictor.predict` as RGB uint8 (H, W, 3).

    Raises:
        ConfigError: a path that does not exist; an array or tensor of another layout or dtype.
        DataError: a file that cannot be read as an image.
    """
    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"Image file {str(path)!r} does not exist; give the path of an image."
            )
        return read_image(path)
    if isinstance(image, Image.Image):
        return rgb8(image, "the PIL image")
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] not in CHANNELS:
            raise ConfigError(
                f"A torch image tensor is channels-first, (3, H, W) or (N, 3, H, W); got shape "
                f"{tuple(image.shape)}: pass tensor.permute(2, 0, 1) for a channels-last one."
            )
        if image.ndim not in (2, 3):
            raise ConfigError(
                f"A torch image tensor is (C, H, W) or (H, W), a batch (N, C, H, W) given alone, "
                f"not in a list; got shape {tuple(image.shape)}."
            )
        tensor = image.detach().cpu()
        return _rgb8_array((tensor if tensor.ndim == 2 else tensor.permute(1, 2, 0)).numpy())
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] not in CHANNELS:
        hint = (
            ": it looks channels-first; pass array.transpose(1, 2, 0)"
            if array.shape[0] in CHANNELS
            else ""
        )
        raise ConfigError(
            f"A NumPy image array is channels-last, (H, W, 3), (H, W, 4) or (H, W), as PIL and "
            f"OpenCV read images; got shape {array.shape}{hint}."
        )
    return _rgb8_array(array)


def _rgb8_array(array: np.ndarray) -> np.ndarray:
    """A channels-last array (H, W) or (H, W, 1|3|4), uint8 or uint16, as RGB uint8."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.dtype == np.uint16:  # keep the high byte, as the image reader does
        array = (array >> 8).astype(np.uint8)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ConfigError(
            f"An image must be uint8 or uint16, (H, W) or (H, W, 3|4) (a NumPy array), or (C, H, W) "
            f"(a torch tensor); got {array.dtype} of shape {array.shape}."
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
