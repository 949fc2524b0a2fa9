"""What a run was made of (config, code version, package versions, model size), recorded once per
run in ``run_info.json`` and in every logger's hyperparameters."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torch.utils.tensorboard.summary import hparams

# The module's epoch metrics, shown beside the hyperparameters in TensorBoard's HPARAMS tab (it
# reads each run's last value of these scalars).
# The distribution name at the head of a requirement ("torch==2.14.1" -> "torch").
REQUIREMENT_NAME = re.compile(r"[A-Za-z0-9._-]+")
HPARAM_METRICS = ("val/mIoU", "val/dice", "val/pixel_acc", "val/loss")
# HPARAMS compares runs: the sections that shape the result come first (TensorBoard shows the first
# columns), wiring that differs between runs without meaning (paths, callbacks, loggers) is left to
# the config text card.
HPARAM_FIRST = ("config.model.", "config.backbone.", "config.optimizer.", "config.scheduler.")
HPARAM_WIRING = ("config.output_dir", "config.callbacks.", "config.logger.", "run.command")


@rank_zero_only
def log_run_info(config: dict[str, Any], model: nn.Module, loggers: Iterable[Logger]) -> None:
    """Writes ``<config["output_dir"]>/run_info.json`` and logs the config and run facts to
    ``loggers``.

    The loggers get ``{"config": <the run's settings>, "run": <run facts>}``: wandb as its run
    config, CSV and TensorBoard in their ``hparams["yaml"]``; TensorBoard also in its HPARAMS tab
    (flattened, to compare a sweep's runs) and as a ``config`` text card.

    Args:
        config: the run's settings, plain values (the command layer resolves the config).
        model: the module, for its parameter count.
        loggers: where to log.
    """
    info = collect(model)
    Path(config["output_dir"], "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    # Under keys of their own: Lightning logs the module's and the datamodule's hyperparameters
    # at the top level, where the data generator's ``seed`` would overwrite the run's.
    params = {"config": config, "run": info}
    for logger in loggers:
        logger.log_hyperparams(params)
        if isinstance(logger, TensorBoardLogger):
            _tensorboard_hparams(logger, params)


def collect(model: nn.Module) -> dict[str, Any]:
    """The run facts: ``git`` (``commit``, ``dirty``), ``versions``, ``parameters`` (``total``,
    ``trainable`` of ``model``) and ``command`` (the command line)."""
    return {
        "git": git_state(Path(__file__).resolve().parents[1]),
        "versions": package_versions(),
        "parameters": {
            "total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        },
        "command": " ".join(sys.argv),
    }


def git_state(directory: Path) -> dict[str, Any]:
    """The commit checked out in ``directory`` and whether tracked files differ from it.

    Untracked files do not count as changes: scratch files would mark every run dirty. Both are
    ``None`` outside a git checkout (an installed wheel) or without git.
    """

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", str(directory), *args],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    """Python, CUDA, cuDNN, segfw and each of segfw's declared dependencies."""
    requirements = [
        line
        for line in metadata.requires("segfw") or []
        if "extra ==" not in line  # the test and other optional extras
    ]
    names = [match.group() for line in requirements if (match := REQUIREMENT_NAME.match(line))]
    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version())
        if torch.backends.cudnn.is_available()
        else None,
        "segfw": metadata.version("segfw"),
    }
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _tensorboard_hparams(logger: TensorBoardLogger, params: dict[str, Any]) -> None:
    """The HPARAMS tab entry and a text card of the config.

    Lightning's TensorBoardLogger writes the HPARAMS entry only together with metric values
    logged at step 0 (a fake point on every curve); the entry needs only the metric names.
    """
    flat = {
        key: _scalar(value)
        for key, value in sorted(_flatten(params).items(), key=lambda item: _column(item[0]))
        if not key.startswith(HPARAM_WIRING) and not key.endswith("._target_")
    }
    writer = logger.experiment
    for summary in hparams(flat, dict.fromkeys(HPARAM_METRICS, 0.0)):
        writer.file_writer.add_summary(summary)
    # Four-space indentation makes the YAML a code block in TensorBoard's Markdown text cards.
    text = yaml.safe_dump(params, sort_keys=False, allow_unicode=True)
    writer.add_text("config", "    " + text.replace("\n", "\n    "))


def _column(key: str) -> int:
    return next(
        (i for i, first in enumerate(HPARAM_FIRST) if key.startswith(first)), len(HPARAM_FIRST)
    )


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _scalar(value: Any) -> int | float | str | bool:
    # TensorBoard's HPARAMS takes numbers, strings and booleans only.
    return value if isinstance(value, (int, float, str, bool)) else str(value)
