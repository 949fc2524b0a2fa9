"""A checkpoint scored or predicted with a data config: the data's classes and ignore_index must
be the checkpoint's (refused in one line otherwise), and those the config leaves unset are the
checkpoint's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import save_checkpoint, tiny_module
from helpers import compose_config, write_folder_dataset
from layouts import write_camvid
from segfw.commands.evaluate import evaluate
from segfw.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ["background", "circle", "triangle", "square"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 4-class checkpoint, with the shapes dataset's classes and ignore_index 255."""
    module = tiny_module("unet", class_names=SHAPES, palette=None)
    return save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "shapes.ckpt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 3-class folder dataset (only a test split)."""
    return write_folder_dataset(tmp_path_factory.mktemp("folder"), {"test": 2}, num_classes=3)


def _command(script: str, *arguments: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *arguments, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    return [line for line in output.splitlines() if "[ERROR]" in line]


def test_evaluate_py_refuses_data_with_other_classes_in_one_line(checkpoint, folder, tmp_path):
    result = _command(
        "evaluate.py",
        f"ckpt_path={checkpoint}",
        "data=folder",
        f"data.root={folder}",
        "data.num_classes=3",
        "data.class_names=[a,b,c]",
        run_dir=tmp_path / "run",
    )
    assert result.returncode == 1
    (error,) = _errors(result)
    assert str(checkpoint) in error
    assert "trained on 4 classes (background, circle, triangle, square)" in error
    assert "but data=folder has 3 (a, b, c)" in error
    assert "data.num_classes=4 data.class_names=[background,circle,triangle,square]" in error
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_predict_py_refuses_data_with_other_classes_and_ignore_index(checkpoint, tmp_path):
    # CamVid: 11 classes, void is 11; its images are not read, so no data.root is needed.
    image = write_camvid(tmp_path / "camvid", {"test": 1}) / "test"
    result = _command(
        "predict.py",
        f"ckpt_path={checkpoint}",
        f"input={image}",
        f"output={tmp_path / 'out'}",
        "data=camvid",
        run_dir=tmp_path / "run",
    )
    assert result.returncode == 1
    (error,) = _errors(result)
    assert "but data=camvid has 11 (sky, building," in error
    assert "trained with ignore_index=255 but data=camvid has ignore_index=11" in error
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_another_ignore_index_alone(checkpoint, folder, tmp_path):
    # The same classes, but 254 marks unlabelled pixels: scored with the checkpoint's 255, the
    # 254s would be out-of-range labels.
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={checkpoint}",
            "data=folder",
            f"data.root={folder}",
            "data.ignore_index=254",
        ],
        tmp_path,
    )
    with pytest.raises(ConfigError) as raised:
        evaluate(cfg)
    message = str(raised.value)
    assert "trained with ignore_index=255 but data=folder has ignore_index=254" in message
    assert "classes (" not in message  # the classes agree: only ignore_index is named
    assert "set data.ignore_index=255." in message


def test_evaluate_takes_the_class_facts_a_data_config_leaves_unset_from_the_checkpoint(
    checkpoint, tmp_path
):
    # data=folder leaves num_classes and class_names required (???): the checkpoint's are used.
    root = write_folder_dataset(tmp_path / "data", {"test": 2}, num_classes=4)
    cfg = compose_config(
        "evaluate",
        [
            f"ckpt_path={checkpoint}",
            "trainer.accelerator=cpu",
            "data=folder",
            f"data.root={root}",
            "data.num_workers=0",
            "worst_cases=0",
        ],
        tmp_path / "eval",
    )
    scores = evaluate(cfg)
    assert sorted(k for k in scores if k.startswith("test/IoU/")) == sorted(
        f"test/IoU/{name}" for name in SHAPES
    )
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["test/mIoU"] == pytest.approx(scores["test/mIoU"])


def test_train_py_refuses_to_resume_a_checkpoint_on_data_with_other_classes(checkpoint, tmp_path):
    # Before: Lightning's load_state_dict failed on the classifier's shape, a traceback from inside
    # trainer.fit.
    root = write_folder_dataset(tmp_path / "data", num_classes=3)
    result = _command(
        "train.py",
        f"ckpt_path={checkpoint}",
        "data=folder",
        f"data.root={root}",
        "data.num_classes=3",
        "data.class_names=[a,b,c]",
        "backbone=mobilenetv2",
        "backbone.weights=null",
        run_dir=tmp_path / "run",
    )
    assert result.returncode == 1
    (error,) = _errors(result)
    assert "trained on 4 classes (background, circle, triangle, square)" in error
    assert (
        f"start a new run from its encoder (backbone.weights={checkpoint}, no ckpt_path)" in error
    )
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))
