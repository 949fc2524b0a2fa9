"""segfw as an installed package: the wheel carries the configs, and the console scripts compose
them with a user's own config dir on top (.ci/wheel_smoke.sh installs the wheel and runs it)."""

from __future__ import annotations

import configparser
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"segfw-train", "segfw-evaluate", "segfw-predict", "segfw-export"}


def test_wheel_ships_the_configs_and_the_console_scripts(tmp_path):
    # Built from a copy of what the wheel is made of: setuptools would otherwise reuse the
    # checkout's segfw.egg-info/SOURCES.txt and build/, which can list files the build config
    # alone would leave out. No build isolation and no dependencies: the file list is all this
    # checks.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "segfw", source / "segfw", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("segfw-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = "".join(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    configs = {p.relative_to(ROOT).as_posix() for p in (ROOT / "segfw/conf").rglob("*.yaml")}
    assert len(configs) > 40  # every group: model, backbone, data ... hydra/launcher
    missing = configs - names
    assert not missing, f"configs the wheel lacks: {sorted(missing)}"
    scripts = configparser.ConfigParser()
    scripts.read_string(entry_points)
    assert scripts.has_section("console_scripts"), "the wheel declares no console scripts"
    assert set(scripts["console_scripts"]) == SCRIPTS
    for target in scripts["console_scripts"].values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_console_train_layers_a_user_config_dir(tmp_path, monkeypatch, capsys):
    """``segfw-train --config-dir ./myconf experiment=mine``: the user's experiment and dataset
    extend the packaged groups (what the README's install section shows)."""
    from segfw.commands.train import main

    myconf = tmp_path / "myconf"
    (myconf / "experiment").mkdir(parents=True)
    (myconf / "data").mkdir()
    (myconf / "data" / "mydata.yaml").write_text(
        "defaults:\n  - shapes\n  - _self_\nsizes: {train: 7, val: 3, test: 3}\n"
    )
    (myconf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /data: mydata\n  - override /backbone: mobilenetv2\n"
        "model:\n  height: 96\n  width: 96\noptimizer:\n  lr: 0.0123\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = ["segfw-train", "--config-dir", "myconf", "experiment=mine", "--cfg", "job"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["data"]["sizes"] == {"train": 7, "val": 3, "test": 3}  # the user's dataset ...
    assert cfg["data"]["format"] == "shapes"  # ... extending the packaged one
    assert (cfg["model"]["height"], cfg["optimizer"]["lr"]) == (96, 0.0123)
    assert cfg["backbone"]["name"] == "mobilenetv2"  # a packaged group the experiment chose
    assert cfg["model"]["name"] == "unet"  # the packaged default, untouched
