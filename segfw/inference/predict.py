"""Masks for image files: ``python predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR``.

For each image under ``input`` (a file, or a folder searched recursively; hidden files aside) it
writes, at the image's own size:

- ``<output>/masks/<relative path>.png``: the class index of every pixel, as a palette ("P" mode)
  PNG: pixel values are class indices, the embedded palette holds the class colours, so viewers
  show colours and ``numpy.asarray(PIL.Image.open(path))`` gives the indices;
- ``<output>/overlays/<relative path>.png``: the image with the class colours painted over it;
- ``<output>/summary.json``: what was predicted, shrunk and skipped.

Images are read on their stored pixel grid (the EXIF orientation is ignored, as training reads
them): grey and palette images become RGB, an alpha channel is dropped, 16-bit images keep their
high byte (as Pillow reads 16-bit colour PNGs). A file that cannot be read as an image is skipped
and reported at the end; the run goes on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from segfw.errors import ConfigError
from segfw.inference.modes import build_inference, labels_at
from segfw.training.module import SegmentationModule
from segfw.visualize import checkpoint_palette

log = logging.getLogger(__name__)

# A class index is one byte of a palette PNG.
MAX_CLASSES = 256


class SkippedFile(Exception):
    """A file predict cannot use; the message says why."""


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predicts every image of ``cfg.input`` with ``cfg.inference`` and writes masks and overlays.

    Returns:
        The summary, also written to ``<output>/summary.json``: ``predicted`` (count),
        ``outputs`` ({image: [mask, overlay]}), ``shrunk`` (images above ``max_pixels``,
        predicted at a reduced size and their masks resized back), ``skipped`` ({file: reason}),
        ``seconds`` and ``images_per_second``.

    Raises:
        ConfigError: no checkpoint at ``ckpt_path``, no input, or a bad setting.
    """
    checkpoint = Path(cfg.ckpt_path).expanduser()
    if not checkpoint.is_file():
        raise ConfigError(
            f"ckpt_path={str(checkpoint)!r} is not a file; pass a .ckpt written by train.py."
        )
    if cfg.batch_size < 1 or cfg.max_pixels < 1 or not 0 <= cfg.overlay_alpha <= 1:
        raise ConfigError(
            f"batch_size={cfg.batch_size} and max_pixels={cfg.max_pixels} must be >= 1, "
            f"overlay_alpha={cfg.overlay_alpha} in 0..1."
        )
    output = Path(cfg.output).expanduser()
    files, root = list_inputs(Path(cfg.input).expanduser(), output)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    )
    module = SegmentationModule.load_from_checkpoint(checkpoint, map_location=device).eval()
    hparams = module.hparams
    if hparams.num_classes > MAX_CLASSES:
        raise ConfigError(
            f"The checkpoint has {hparams.num_classes} classes; a palette PNG mask holds at most "
            f"{MAX_CLASSES}."
        )
    inference = build_inference(cfg.inference, module)
    palette = checkpoint_palette(hparams)
    names = output_names(files, root)

    outputs: dict[str, list[str]] = {}
    shrunk: list[str] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not cfg.progress) as progress, torch.inference_mode():
        task = progress.add_task("predict", total=len(files))
        for batch in _chunks(files, cfg.batch_size):
            images, inputs = [], []
            for path in batch:
                try:
                    image = read_image(path, cfg.max_image_pixels)
                except SkippedFile as error:
                    skipped[str(path)] = str(error)
                    progress.advance(task)
                    continue
                working = shrink_to(image, cfg.max_pixels)
                if working is not image:
                    shrunk.append(str(path))
                images.append((path, image))
                inputs.append(torch.from_numpy(working).permute(2, 0, 1).to(device))
            logits = inference.logits(module, inputs) if inputs else []
            for (path, image), scores in zip(images, logits, strict=True):
                labels = labels_at(scores, image.shape[:2]).cpu().numpy()
                mask_path = output / "masks" / names[path]
                overlay_path = output / "overlays" / names[path]
                try:
                    write_mask(labels, palette, mask_path)
                    write_overlay(image, labels, palette, cfg.overlay_alpha, overlay_path)
                except OSError as error:
                    skipped[str(path)] = f"could not write its outputs: {error}"
                else:
                    outputs[str(path)] = [str(mask_path), str(overlay_path)]
                progress.advance(task)

    seconds = time.perf_counter() - start
    summary = {
        "predicted": len(outputs),
        "outputs": outputs,
        "shrunk": shrunk,
        "skipped": skipped,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(outputs) / seconds, 3) if seconds > 0 else None,
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _log_summary(summary, output, cfg.max_pixels)
    return summary


def list_inputs(path: Path, output: Path) -> tuple[list[Path], Path]:
    """The files to predict and the folder their output names are relative to. Files under
    ``output`` are left out: a second run into a folder inside ``path`` must not predict the
    masks of the first.

    Raises:
        ConfigError: the path does not exist or holds no files.
    """
    if path.is_file():
        return [path], path.parent
    if not path.is_dir():
        raise ConfigError(f"input={str(path)!r} does not exist; give an image file or a folder.")
    output = output.resolve()
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
        and not p.resolve().is_relative_to(output)
    )
    if not files:
        raise ConfigError(f"input={str(path)!r} holds no files; give a folder of images.")
    return files, path


def output_names(files: Sequence[Path], root: Path) -> dict[Path, Path]:
    """The relative output path of each file: its path under ``root`` with a ``.png`` suffix, or
    with ``.png`` appended where two files of a folder share a stem (``a.jpg``, ``a.png``)."""
    stems: dict[Path, int] = {}
    for path in files:
        key = path.relative_to(root).with_suffix("")
        stems[key] = stems.get(key, 0) + 1
    names = {}
    for path in files:
        relative = path.relative_to(root)
        unique = stems[relative.with_suffix("")] == 1
        names[path] = relative.with_suffix(".png") if unique else Path(f"{relative}.png")
    return names


def read_image(path: Path, max_pixels: int) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image; see the module docstring for the conversions.

    Raises:
        SkippedFile: not an image Pillow can decode, a truncated one, float pixels, or more
            pixels than ``max_pixels``.
    """
    # Pillow's own guard against decompression bombs allows ~179 megapixels; this function
    # applies ``max_pixels`` from the header instead, before anything is decoded.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise SkippedFile(
                    f"{width} x {height} is {width * height} pixels, more than "
                    f"max_image_pixels={max_pixels}; raise max_image_pixels to read it."
                )
            return _rgb8(image)
    except (OSError, ValueError, SyntaxError) as error:
        # Pillow reports unknown formats and truncated files as OSError, some bad headers as
        # ValueError or SyntaxError.
        raise SkippedFile(f"not a readable image: {error}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _rgb8(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I"):
        # 16-bit grey ("I;16*"; "I" is Pillow's 32-bit integer mode, which 16-bit files may open
        # as): keep the high byte of each value.
        pixels = np.asarray(image)
        grey = (np.clip(pixels, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        raise SkippedFile(
            "32-bit float pixels have no standard 0..255 range; convert the image to 8 or 16 bits."
        )
    return np.array(image.convert("RGB"))


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


def write_mask(labels: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Class indices (H, W) as a palette PNG with the class colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(labels)
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(palette)] = palette
    mask.putpalette(colours.tobytes())  # an "L" image given a palette becomes a "P" image
    mask.save(path)


def write_overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float, path: Path
) -> None:
    """The image with each pixel's class colour blended in at weight ``alpha``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # addWeighted blends uint8 to uint8 without a float copy of a possibly huge image.
    blended = cv2.addWeighted(image, 1 - alpha, palette[labels], alpha, 0)
    # Level 1: overlays are for looking at, and large ones compress slowly at the default level.
    Image.fromarray(blended).save(path, compress_level=1)


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _log_summary(summary: dict[str, Any], output: Path, max_pixels: int) -> None:
    log.info(
        "predicted %d image(s) in %.1f s; masks and overlays in %s",
        summary["predicted"],
        summary["seconds"],
        output,
    )
    if summary["shrunk"]:
        log.info(
            "%d image(s) above max_pixels=%d were predicted shrunk, their masks resized back to "
            "full size: %s",
            len(summary["shrunk"]),
            max_pixels,
            ", ".join(summary["shrunk"]),
        )
    for path, reason in summary["skipped"].items():
        log.warning("skipped %s: %s", path, reason)
    if summary["skipped"]:
        log.warning(
            "%d file(s) skipped; listed in %s", len(summary["skipped"]), output / "summary.json"
        )
