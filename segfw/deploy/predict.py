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
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from segfw.data.files import read_image
from segfw.deploy.predictor import Predictor
from segfw.errors import ConfigError, DataError
from segfw.visualize import checkpoint_palette, overlay

log = logging.getLogger(__name__)

# A class index is one byte of a palette PNG.
MAX_CLASSES = 256


def predict_files(
    predictor: Predictor,
    input: Path,
    output: Path,
    overlay_alpha: float = 0.5,
    max_image_pixels: int = 2**30,
    progress: bool = True,
) -> dict[str, Any]:
    """Predicts every image under ``input`` and writes masks, overlays and ``summary.json``.

    Args:
        predictor: the trained model (:class:`segfw.deploy.predictor.Predictor`).
        input: an image file, or a folder searched recursively (hidden files aside).
        output: where ``masks/``, ``overlays/`` and ``summary.json`` go.
        overlay_alpha: weight of the class colours over the image in overlays.
        max_image_pixels: larger files are skipped unread.
        progress: show a progress bar.

    Returns:
        The summary, also written to ``<output>/summary.json``: ``predicted`` (count),
        ``outputs`` ({image: [mask, overlay]}), ``shrunk`` (images above the predictor's
        ``max_pixels``, predicted at a reduced size and their masks resized back), ``skipped``
        ({file: reason}), ``seconds`` and ``images_per_second``.

    Raises:
        ConfigError: no input, or a setting out of range.
    """
    if not 0 <= overlay_alpha <= 1:
        raise ConfigError(f"overlay_alpha={overlay_alpha} must lie in 0..1.")
    hparams = predictor.module.hparams
    if hparams["num_classes"] > MAX_CLASSES:
        raise ConfigError(
            f"The checkpoint has {hparams['num_classes']} classes; a palette PNG mask holds at most "
            f"{MAX_CLASSES}."
        )
    files, root = list_inputs(input, output)
    palette = checkpoint_palette(hparams)
    names = output_names(files, root)
    outputs: dict[str, list[str]] = {}
    shrunk: list[str] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("predict", total=len(files))
        for batch in _chunks(files, predictor.batch_size):
            images = []
            for path in batch:
                try:
                    images.append((path, read_image(path, max_image_pixels)))
                except DataError as error:
                    skipped[str(path)] = str(error)
                    bar.advance(task)
            masks = predictor.predict_arrays([image for _, image in images]) if images else []
            for (path, image), labels in zip(images, masks, strict=True):
                if image.shape[0] * image.shape[1] > predictor.max_pixels:
                    shrunk.append(str(path))
                mask_path = output / "masks" / names[path]
                overlay_path = output / "overlays" / names[path]
                try:
                    write_mask(labels, palette, mask_path)
                    write_overlay(image, labels, palette, overlay_alpha, overlay_path)
                except OSError as error:
                    skipped[str(path)] = f"could not write its outputs: {error}"
                else:
                    outputs[str(path)] = [str(mask_path), str(overlay_path)]
                bar.advance(task)

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
    _log_summary(summary, output, predictor.max_pixels)
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
    # Level 1: overlays are for looking at, and large ones compress slowly at the default level.
    Image.fromarray(overlay(image, labels, palette, alpha)).save(path, compress_level=1)


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
