"""Checking data: the inspect command's report and preview, training's start-up checks with the
same messages, and class weights measured from the training masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from helpers import compose_config, tiny
from layouts import save_mask, save_rgb, write_painted_folder
from segfw.commands.inspect import inspect
from segfw.commands.train import train
from segfw.data.survey import format_report
from segfw.training.losses import build_loss, median_frequency_weights

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"train": [(48, 64)] * 4, "val": [(48, 64)] * 2, "test": [(48, 64)] * 2}
CLASSES = ["a", "b", "c"]


def folder_args(root: Path) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.num_classes=3", "data.class_names=[a,b,c]"]


def mask_counts(root: Path, split: str) -> np.ndarray:
    """(images, 3) pixels of each class in each mask of a split, read independently of segfw."""
    paths = sorted((root / "masks" / split).iterdir())
    return np.array([np.bincount(np.asarray(Image.open(p)).ravel(), minlength=3) for p in paths])


def test_inspect_reports_counts_and_class_frequencies_and_writes_previews(tmp_path):
    root = write_painted_folder(tmp_path / "data", SIZES)
    cfg = compose_config("inspect", tiny(folder_args(root)), tmp_path / "out")
    report = inspect(cfg)
    for stage, sizes in SIZES.items():
        entry = report["splits"][stage]
        counts = mask_counts(root, stage)
        assert entry["samples"] == len(sizes) and entry["problems"] == []
        assert list(entry["class_pixels"].values()) == counts.sum(axis=0).tolist()
        assert list(entry["class_images"].values()) == (counts > 0).sum(axis=0).tolist()
        assert entry["min_size"] == entry["max_size"] == (48, 64)
        preview = cv2.imread(entry["preview"])
        assert preview is not None and preview.shape[0] > 240
    assert (
        json.loads((tmp_path / "out" / "report.json").read_text())["splits"]["val"]["samples"] == 2
    )
    text = format_report(report, CLASSES)
    assert "train split (train): 4 samples, height x width from 48x64 to 48x64" in text


def break_dataset(root: Path) -> dict[str, Path]:
    """One file of each kind of problem; returns the file each problem must name."""
    bad = {
        "unknown label values": root / "masks" / "train" / "img1.png",
        "unreadable file": root / "images" / "train" / "img2.png",
        "missing pair": root / "images" / "train" / "img3.png",
        "size mismatch": root / "masks" / "val" / "img0.png",
        "mask format": root / "masks" / "val" / "img1.png",
    }
    mask = np.asarray(Image.open(bad["unknown label values"])).copy()
    mask[:3, :3] = 7
    save_mask(bad["unknown label values"], mask)
    bad["unreadable file"].write_bytes(b"not a png")
    (root / "masks" / "train" / "img3.png").unlink()
    save_mask(bad["size mismatch"], np.zeros((40, 64), np.uint8))
    save_rgb(bad["mask format"], np.zeros((48, 64, 3), np.uint8))
    return bad


def test_inspect_lists_every_problem_and_training_stops_with_the_same_messages(
    tmp_path, train_config
):
    root = write_painted_folder(tmp_path / "data", SIZES)
    bad = break_dataset(root)
    report = inspect(compose_config("inspect", tiny(folder_args(root)), tmp_path / "out"))
    problems = [p for entry in report["splits"].values() for p in entry["problems"]]
    assert sorted(p["kind"] for p in problems) == sorted(bad)
    for problem in problems:
        assert str(bad[problem["kind"]]) in problem["message"]
    messages = {p["kind"]: p["message"] for p in problems}

    # Training opens train first: the unpaired image stops it at once.
    with pytest.raises(ValueError) as error:
        train(train_config(*folder_args(root)))
    assert messages["missing pair"] in str(error.value)
    # Then the file headers: the unreadable image.
    (root / "images" / "train" / "img3.png").unlink()
    with pytest.raises(ValueError) as error:
        train(train_config(*folder_args(root)))
    assert messages["unreadable file"] in str(error.value)
    # data.check=full decodes every mask at start-up: the label values too.
    save_rgb(bad["unreadable file"], np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError) as error:
        train(train_config(*folder_args(root), "data.check=full"))
    assert messages["unknown label values"] in str(error.value)
    # With the train split sound, the headers of val: its two problems, in one message.
    save_mask(bad["unknown label values"], np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match=r"The val split has 2 problem\(s\)") as error:
        train(train_config(*folder_args(root)))
    assert messages["size mismatch"] in str(error.value)
    assert messages["mask format"] in str(error.value)


def test_inspect_command_exits_1_naming_the_bad_file(tmp_path):
    root = write_painted_folder(tmp_path / "data", SIZES)
    mask = root / "masks" / "val" / "img1.png"
    save_mask(mask, np.full((48, 64), 9, np.uint8))
    run_dir = tmp_path / "inspect run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segfw.data.inspect",
            *folder_args(root),
            "data.num_workers=0",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"[unknown label values] Mask {mask} holds values [9]" in output
    assert {p.name for p in run_dir.iterdir()} >= {
        "report.json",
        "preview_train.png",
        "preview_val.png",
        "preview_test.png",
    }


def test_median_frequency_weights():
    # freq = [100/200, 10/100, -]: median 0.3 -> [0.3/0.5, 0.3/0.1, 0 for the absent class]
    assert median_frequency_weights([100, 10, 0], [200, 100, 0]) == pytest.approx([0.6, 3.0, 0.0])


def test_class_weights_auto_are_measured_before_training_and_kept_in_the_checkpoint(
    tmp_path, train_config
):
    root = write_painted_folder(tmp_path / "data", SIZES)
    counts = mask_counts(root, "train")
    frequency = counts.sum(axis=0) / ((counts > 0) * counts.sum(axis=1, keepdims=True)).sum(axis=0)
    expected = np.median(frequency) / frequency
    cfg = train_config(*folder_args(root), "loss.class_weights=auto")
    metrics = train(cfg)
    checkpoint = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    saved = checkpoint["hyper_parameters"]["loss"]["class_weights"]
    assert saved == pytest.approx(expected.tolist(), rel=1e-5)
    assert OmegaConf.load(tmp_path / "run" / "config.yaml").loss.class_weights == saved


def test_class_weights_auto_outside_the_train_task_says_what_resolves_it():
    with pytest.raises(
        ValueError, match=r"loss.class_weights='auto'.*train.py \(and segfw.train\) resolve"
    ):
        build_loss({"name": "ce", "class_weights": "auto"}, 3, 255)
