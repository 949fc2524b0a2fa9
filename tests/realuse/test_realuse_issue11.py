"""The individual faults of issue 11 that a user meets through the commands: each test runs the
command as a user would and checks its exit code, its files and the one message it gives."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from realuse_layouts import FOLDER_CLASSES, write_folder
from realuse_runs import Result, command, model_overrides

# The embedded dataset at a few images per split, on a network that is cheap at its size.
SHAPES = [
    "data=shapes",
    "data.sizes.train=16",
    "data.sizes.val=5",
    "data.sizes.test=3",
    *model_overrides("segnet-2"),
    "trainer.max_epochs=1",
]


def one_message(result: Result) -> str:
    """The single error line a failing command logs; there must be one, and no traceback."""
    assert result.returncode == 1, result.explain()
    assert "Traceback" not in result.output, result.explain()
    errors = [line for line in result.output.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, result.explain()
    return errors[0]


@pytest.fixture(scope="module")
def no_validation(tmp_path_factory) -> tuple[Result, Path]:
    """A run without validation (``trainer.limit_val_batches=0``) that also scores its training
    batches (``train_metrics=true``)."""
    directory = tmp_path_factory.mktemp("no_validation")
    result = command(
        "train.py",
        *SHAPES,
        "trainer.limit_val_batches=0",  # not among segfw/conf/trainer keys: added with +
        "train_metrics=true",
        f"hydra.run.dir={directory}",
    )
    return result, directory


def test_training_without_validation_finishes_and_says_so(no_validation):
    result, directory = no_validation
    assert result.returncode == 0, result.explain()
    assert (directory / "checkpoints" / "last.ckpt").is_file()
    assert "No validation figures exist for this run" in result.output
    metrics = (directory / "metrics.json").read_text()
    assert '"test/mIoU"' in metrics and '"val/' not in metrics


def test_train_metrics_are_scored(no_validation):
    result, directory = no_validation
    assert result.returncode == 0, result.explain()
    with (directory / "csv" / "metrics.csv").open(newline="") as file:
        values = [row["train/mIoU"] for row in csv.DictReader(file) if row.get("train/mIoU")]
    assert len(values) == 1 and 0 <= float(values[0]) <= 1


def test_export_does_not_announce_a_random_encoder(no_validation, tmp_path):
    """export.py loads trained weights: "random initialization" would be a false alarm."""
    _, directory = no_validation
    result = command(
        "export.py",
        f"ckpt_path={directory / 'checkpoints' / 'last.ckpt'}",
        "format=torchscript",
        f"output={tmp_path / 'exported'}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.explain()
    assert (tmp_path / "exported" / "model.pt").is_file()
    assert "random initialization" not in result.output


def test_a_missing_test_split_stops_the_run_before_training(tmp_path):
    root = write_folder(tmp_path / "data", {"train": 5, "val": 3})  # no images/test
    run = tmp_path / "run"
    result = command(
        "train.py",
        "data=folder",
        f"data.root={root}",
        "data.num_classes=3",
        f"data.class_names=[{','.join(FOLDER_CLASSES)}]",
        *model_overrides("segnet-2"),
        "trainer.max_epochs=1",
        f"hydra.run.dir={run}",
    )
    message = one_message(result)
    assert "images/test" in message and "data.splits.test=null" in message
    assert not (run / "checkpoints").exists()  # refused before the first step


def test_missing_required_settings_are_listed_in_one_message(tmp_path):
    result = command("train.py", "data=folder", f"hydra.run.dir={tmp_path}")
    message = one_message(result)
    assert "data.num_classes" in message and "data.root" in message


def test_a_misspelled_model_key_lists_every_accepted_key(tmp_path):
    result = command("train.py", *SHAPES, "++model.heigth=64", f"hydra.run.dir={tmp_path}")
    message = one_message(result)
    assert "model.heigth" in message
    assert "model.height" in message and "model.width" in message


def test_a_misspelled_optimized_metric_fails_before_training(tmp_path):
    result = command("train.py", *SHAPES, "optimized_metric=val/miou", f"hydra.run.dir={tmp_path}")
    message = one_message(result)
    assert "val/miou" in message and "val/mIoU" in message
    assert not (tmp_path / "checkpoints").exists()


def test_a_diverging_run_points_at_no_missing_folder(tmp_path):
    """A loss that becomes NaN before the first checkpoint: the message must not send the user
    to a checkpoints folder that was never written."""
    result = command(
        "train.py",
        *SHAPES,
        "data.sizes.train=32",  # two steps: the first one's huge update makes the second NaN
        "optimizer.lr=1e30",
        f"hydra.run.dir={tmp_path}",
    )
    message = one_message(result)
    assert "NaN or infinite" in message
    for path in re.findall(r"(/[^\s'\"]+)", message):
        assert Path(path.rstrip(".,;:")).exists(), path
