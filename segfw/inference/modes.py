"""Inference modes shared by predict and evaluate: whole image, sliding window, test-time
augmentation.

An :class:`Inference` maps images of any size to logits at that size:

- ``whole``: the image is resized as ``resize`` says, padded at the bottom and right with zeros
  (as training pads its crops) to the model's input size, and run once; the logits of the image's
  own region are resized back to the image's size. ``resize``: ``shrink`` scales the image down,
  never up, until it fits the model's ``height x width`` keeping its aspect ratio (what
  ``data.eval_mode=fit`` does while training); ``fit`` scales it up or down to fit; ``none`` keeps
  its size and pads it to a multiple of the network's input divisor instead.
- ``slide``: windows of ``crop`` size every ``stride`` pixels over the image at its own size; the
  last window of each row and column is aligned with the image's far edge, so every pixel is
  covered, and where windows overlap their logits are averaged. An image smaller than the crop is
  padded to it. Memory stays bounded whatever the image size: ``batch_size`` windows at a time.
- test-time augmentation, over either mode: every factor of ``scales`` (the image resized by it
  first), each with and without a left-right flip if ``flip``; the logits of every pass are
  flipped back, resized to a common size and averaged.

Logits are averaged, not probabilities, so the result is the tensor a forward pass gives and the
evaluation loss still applies to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError

MODES = ("whole", "slide")
RESIZES = ("shrink", "fit", "none")

Size = tuple[int, int]
# Maps images (N, 3, H, W), uint8 or float in 0..255, to logits (N, C, H, W): the LightningModule's
# forward, or any network with the same contract.
Model = Callable[[torch.Tensor], torch.Tensor]


class Inference:
    """One inference mode with its test-time augmentation; see the module docstring.

    Args:
        height: the model's input height (``model.height``).
        width: the model's input width (``model.width``).
        divisor: the network's input divisor: padded inputs are multiples of it.
        mode: ``whole`` or ``slide``.
        resize: ``whole`` mode: ``shrink``, ``fit`` or ``none``.
        crop: ``slide`` mode: window [height, width] (an int: square); None: the model's input
            size.
        stride: ``slide`` mode: step between windows [vertical, horizontal] (an int: both);
            None: two thirds of the crop.
        flip: also predict each image mirrored left-right.
        scales: factors the image is resized by before each pass; ``[1.0]``: one scale.
        batch_size: images (``whole``) or windows (``slide``) per forward pass.

    Raises:
        ConfigError: a setting out of range; the message names it and what is allowed.
    """

    def __init__(
        self,
        height: int,
        width: int,
        divisor: int,
        mode: str = "whole",
        resize: str = "shrink",
        crop: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        batch_size: int = 8,
    ) -> None:
        choose(MODES, mode, "inference.mode")
        choose(RESIZES, resize, "inference.resize")
        self.mode = mode
        self.height, self.width, self.divisor = height, width, divisor
        self.resize = resize
        self.crop = _pair(crop, "crop") if crop is not None else (height, width)
        if any(c <= 0 or c % divisor for c in self.crop):
            fixed = [max(divisor, round(c / divisor) * divisor) for c in self.crop]
            raise ConfigError(
                f"inference.crop={list(self.crop)}: the network takes sizes that are multiples "
                f"of {divisor}; use inference.crop={fixed}."
            )
        if stride is None:
            self.stride = tuple(max(1, c * 2 // 3) for c in self.crop)
        else:
            self.stride = _pair(stride, "stride")
        if any(not 1 <= s <= c for s, c in zip(self.stride, self.crop, strict=True)):
            raise ConfigError(
                f"inference.stride={list(self.stride)} must lie in 1..crop={list(self.crop)} in "
                f"each direction: a larger step would leave pixels that no window covers."
            )
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(
                f"inference.scales={list(scales)}: give one or more factors > 0, e.g. [1.0] or "
                f"[0.75, 1.0, 1.25]."
            )
        if batch_size < 1:
            raise ConfigError(f"inference.batch_size={batch_size} must be >= 1.")
        self.flip = bool(flip)
        self.batch_size = batch_size

    def __call__(self, model: Model, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) for images (N, 3, H, W), at the images' own size."""
        size = (images.shape[-2], images.shape[-1])
        return torch.stack([resize_logits(x, size) for x in self.logits(model, list(images))])

    def base_size(self, size: Size) -> Size:
        """The size at which the logits of an image of ``size`` (height, width) are produced and
        the passes of test-time augmentation averaged: the resized image (``whole`` with
        ``shrink`` or ``fit``), else the image's own size."""
        height, width = size
        if self.mode == "slide" or self.resize == "none":
            return size
        scale = min(self.height / height, self.width / width)
        if self.resize == "shrink":
            scale = min(scale, 1.0)
        return _scaled(size, scale)

    def logits(self, model: Model, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Logits (C, h, w) of each image (3, H, W), at ``base_size((H, W))``.

        Images may differ in size; all go through the model in batches of ``batch_size``
        same-sized inputs, on the images' device. The caller chooses the autograd mode
        (``torch.inference_mode()`` for prediction).
        """
        sums: list[torch.Tensor | None] = [None] * len(images)
        batch: list[_Tile] = []
        for tile in self._tiles(images):
            if batch and (
                len(batch) == self.batch_size or batch[0].pixels.shape != tile.pixels.shape
            ):
                self._run(model, batch, sums)
                batch = []
            batch.append(tile)
        if batch:
            self._run(model, batch, sums)
        passes = len(self.scales) * (2 if self.flip else 1)
        return [cast(torch.Tensor, s) / passes for s in sums]

    def _tiles(self, images: Sequence[torch.Tensor]) -> Iterator[_Tile]:
        # Images innermost: in whole mode every image of one pass has the same input size, so
        # consecutive tiles batch together; windows of a slide pass always have the crop's size.
        flips = (False, True) if self.flip else (False,)
        for scale in self.scales:
            for flip in flips:
                for index, image in enumerate(images):
                    base = self.base_size((image.shape[-2], image.shape[-1]))
                    size = _scaled(base, scale)
                    pixels = _resize_image(image, size)
                    if flip:
                        pixels = pixels.flip(-1)
                    boxes = self._boxes(size)
                    canvas = self._canvas(size, scale)
                    job = _Pass(index, flip, base, size, remaining=len(boxes))
                    for top, left, height, width in boxes:
                        tile = torch.zeros((3, *canvas), dtype=torch.float32, device=image.device)
                        tile[:, :height, :width] = pixels[
                            :, top : top + height, left : left + width
                        ]
                        yield _Tile(job, tile, top, left, height, width)

    def _boxes(self, size: Size) -> list[tuple[int, int, int, int]]:
        """(top, left, height, width) of each window over an image of ``size``."""
        if self.mode == "whole":
            return [(0, 0, *size)]
        rows = _starts(size[0], self.crop[0], self.stride[0])
        columns = _starts(size[1], self.crop[1], self.stride[1])
        height, width = min(size[0], self.crop[0]), min(size[1], self.crop[1])
        return [(top, left, height, width) for top in rows for left in columns]

    def _canvas(self, size: Size, scale: float) -> Size:
        """The network input a tile of an image of ``size`` is padded to."""
        if self.mode == "slide":
            return self.crop
        if self.resize == "none":
            return (_round_up(size[0], self.divisor), _round_up(size[1], self.divisor))
        # The model's input size, at the pass's scale (at scale 1: what training fed it).
        box = _scaled((self.height, self.width), scale)
        return (_round_up(box[0], self.divisor), _round_up(box[1], self.divisor))

    def _run(self, model: Model, tiles: list[_Tile], sums: list[torch.Tensor | None]) -> None:
        logits = model(torch.stack([t.pixels for t in tiles])).float()
        for tile, out in zip(tiles, logits, strict=True):
            job = tile.job
            if job.logits is None or job.count is None:
                job.logits = out.new_zeros((out.shape[0], *job.size))
                job.count = out.new_zeros((1, *job.size))
            rows = slice(tile.top, tile.top + tile.height)
            columns = slice(tile.left, tile.left + tile.width)
            job.logits[:, rows, columns] += out[:, : tile.height, : tile.width]
            job.count[:, rows, columns] += 1
            job.remaining -= 1
            if job.remaining == 0:
                result = job.logits / job.count
                if job.flip:
                    result = result.flip(-1)
                result = resize_logits(result, job.base)
                total = sums[job.index]
                sums[job.index] = result if total is None else total + result
                job.logits = job.count = None  # the pass is done: free its buffers now


@dataclass
class _Pass:
    """One image at one scale, maybe mirrored: the logits of its tiles accumulate here."""

    index: int
    flip: bool
    base: Size
    size: Size
    remaining: int
    logits: torch.Tensor | None = None
    count: torch.Tensor | None = None


@dataclass
class _Tile:
    """One network input: a window (or all) of a pass's image at the top left of a zero canvas."""

    job: _Pass
    pixels: torch.Tensor
    top: int
    left: int
    height: int
    width: int


def build_inference(
    settings: Mapping[str, Any], height: int, width: int, divisor: int
) -> Inference:
    """The :class:`Inference` of an ``inference`` config section (``segfw/conf/inference/*.yaml``) for a
    network trained at ``height`` x ``width`` whose inputs must be multiples of ``divisor``.

    Raises:
        ConfigError: an unknown key or a setting out of range.
    """
    check_arguments(Inference, settings, "inference", skip=3)
    return Inference(height, width, divisor, **settings)


def resize_logits(logits: torch.Tensor, size: Size) -> torch.Tensor:
    """Logits (C, h, w) resized bilinearly to ``size`` (height, width)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]


def labels_at(logits: torch.Tensor, size: Size, band_pixels: int = 1 << 22) -> torch.Tensor:
    """Class indices, uint8 (H, W), of logits (C, h, w) resized to ``size`` (H, W).

    The same as ``resize_logits(logits, size).argmax(0)`` (up to float rounding on near ties),
    computed a band of about ``band_pixels`` output pixels at a time, so that a very large image
    never holds its full-size logits (21 classes at 100 megapixels would be 8 GB). At most 256
    classes (the result is 8-bit).
    """
    source_height = logits.shape[1]
    height, width = size
    if (source_height, logits.shape[2]) == (height, width):
        return logits.argmax(0).to(torch.uint8)
    # Source rows and weights of each output row, as F.interpolate computes them
    # (align_corners=False, float32): source = scale * (row + 0.5) - 0.5, clamped at 0.
    scale = torch.tensor(source_height, dtype=torch.float32) / height
    rows = torch.arange(height, dtype=torch.float32, device=logits.device)
    source = (scale * (rows + 0.5) - 0.5).clamp(min=0)
    upper = source.long()
    lower = (upper + 1).clamp(max=source_height - 1)
    weight = (source - upper).clamp(0, 1)[:, None]
    labels = torch.empty(size, dtype=torch.uint8, device=logits.device)
    step = max(1, band_pixels // width)
    for start in range(0, height, step):
        band = slice(start, start + step)
        blended = (
            logits[:, upper[band]] * (1 - weight[band]) + logits[:, lower[band]] * weight[band]
        )
        # Rows are interpolated already; this resizes the columns alone (a same-size resize of
        # the rows is the identity).
        columns = F.interpolate(
            blended[None], size=(blended.shape[1], width), mode="bilinear", align_corners=False
        )[0]
        labels[band] = columns.argmax(0).to(torch.uint8)
    return labels


def _pair(value: int | Sequence[int], key: str) -> tuple[int, int]:
    values = [value, value] if isinstance(value, int) else list(value)
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise ConfigError(
            f"inference.{key}={value!r}: give [height, width] in pixels (or one int for both)."
        )
    return values[0], values[1]


def _starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one side: every ``stride``, the last one flush with the far edge."""
    if length <= crop:
        return [0]
    return [*range(0, length - crop, stride), length - crop]


def _scaled(size: Size, scale: float) -> Size:
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def _round_up(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def _resize_image(image: torch.Tensor, size: Size) -> torch.Tensor:
    """(3, H, W) image, uint8 or float, resized bilinearly to ``size`` (float 0..255); smoothed
    first when shrunk (antialias), as the data pipeline's area resize does."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrinking = size[0] < image.shape[-2] or size[1] < image.shape[-1]
    resized = F.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrinking
    )
    return resized[0]
