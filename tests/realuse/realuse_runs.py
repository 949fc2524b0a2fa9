"""Running the user's commands (``train.py``, ``evaluate.py``, ``predict.py``) as a user does, with
every default on, and reading back what they wrote.

Only sizes and lengths are shrunk (``model.height``/``width``, split sizes, ``max_epochs``), plus
the one override every offline run needs, ``backbone.weights=null``: loggers, callbacks, loader
workers, sanity checks and evaluation modes stay as the configs set them.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segfw.visualize import GAP, shrink

ROOT = Path(__file__).resolve().parents[2]

# Every architecture config: overrides, and the network's input divisor.
ARCHITECTURES: dict[str, tuple[list[str], int]] = {
    "deeplabv3plus-os8": (["model=deeplabv3plus", "model.output_stride=8"], 8),
    "deeplabv3plus-os16": (["model=deeplabv3plus", "model.output_stride=16"], 16),
    "unet": (["model=unet"], 32),
    "pspnet": (["model=pspnet"], 8),
    "segnet-2": (["model=segnet", "model.num_upsample_layers=2"], 4),
    "segnet-3": (["model=segnet", "model.num_upsample_layers=3"], 8),
    "segnet-4": (["model=segnet", "model.num_upsample_layers=4"], 16),
    "segnet-5": (["model=segnet", "model.num_upsample_layers=5"], 32),
    "unetpp-deep-supervision": (["model=unetpp", "model.deep_supervision=true"], 8),
    "unetpp": (["model=unetpp", "model.deep_supervision=false"], 8),
}
# The model sizes (training crops, and the evaluation size of the fit-mode datasets): odd
# multiples of each network's divisor, no multiple of the next power of two, where it has one.
MODEL_SIZES = {4: (100, 132), 8: (104, 136), 16: (112, 144), 32: (96, 128)}


def model_overrides(architecture: str) -> list[str]:
    """The overrides of an architecture config at its test size, on MobileNetV2 without weights."""
    overrides, divisor = ARCHITECTURES[architecture]
    height, width = MODEL_SIZES[divisor]
    return [
        *overrides,
        "backbone=mobilenetv2",
        "backbone.weights=null",  # offline: the ImageNet weights cannot be downloaded here
        f"model.height={height}",
        f"model.width={width}",
    ]


@dataclass
class Result:
    """A finished command: its exit code, output and wall time."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def explain(self) -> str:
        """The end of the output, for assertion messages."""
        return f"exit {self.returncode}; output ends:\n{self.output[-4000:]}"


def command(script: str, *arguments: str, timeout: float = 3600) -> Result:
    """Runs ``python <script> <arguments>`` in the repository root, as a user would."""
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, script, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - start
    return Result(completed.returncode, completed.stdout, completed.stderr, seconds)


@dataclass
class Run:
    """A training run of one dataset x architecture, and the evaluation of its best checkpoint."""

    dataset: str
    architecture: str
    directory: Path
    train: Result
    evaluation: Result | None = None
    evaluation_metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, Any]:
        return json.loads((self.directory / "metrics.json").read_text())

    @property
    def best_checkpoint(self) -> Path:
        return Path(self.metrics["best_checkpoint"])

    @property
    def config(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load((self.directory / "config.yaml").read_text())


def per_image_rows(directory: Path, split: str) -> list[dict[str, str]]:
    """The rows of ``per_image.csv`` of one split (its folder or list name, e.g. ``val``)."""
    with (directory / "per_image.csv").open(newline="") as file:
        return [row for row in csv.DictReader(file) if row["split"] == split]


def tensorboard_images(directory: Path) -> dict[str, list[np.ndarray]]:
    """Every image the run logged to TensorBoard: tag -> the RGB pictures, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pictures: dict[str, list[np.ndarray]] = {}
    for events in sorted((directory / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["images"]:
            for event in accumulator.Images(tag):
                image = Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
                pictures.setdefault(tag, []).append(np.asarray(image))
    return pictures


def strip_size(size: tuple[int, int], max_size: int = 256) -> tuple[int, int]:
    """(height, width) of a validation picture (image | truth | prediction) of a sample whose
    evaluation input is ``size``: each panel shrunk to ``max_size`` at most, as drawn."""
    panel = shrink(np.zeros(size, np.uint8), max_size, nearest=True).shape
    return panel[0], 3 * panel[1] + 2 * GAP


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    with Image.open(path) as image:
        return image.height, image.width
