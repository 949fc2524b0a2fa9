"""What every command shares: one message and a non-zero exit for a fault, metrics written out."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from segfw.commands.config import in_sweep
from segfw.errors import SegfwError

log = logging.getLogger("segfw")

# The configs every command composes, shipped in the package (pyproject.toml's package-data): the
# same folder in a clone and in an installed wheel.
CONF = Path(__file__).resolve().parents[1] / "conf"

T = TypeVar("T")

# How a DataLoader worker's exception reaches the main process: its traceback as text, then the
# exception's own message (torch.utils.data._utils.ExceptionWrapper).
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def run_command(command: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Runs a command; a fault segfw can name (or a config Hydra could not resolve) ends the
    program with one message and exit code 1 instead of a traceback.

    In a ``-m`` sweep a failing job raises instead, after logging its traceback into the job's own
    log: Hydra records an exception as that job's failure and goes on with the next job (the Optuna
    sweeper marks the trial failed), where SystemExit would end the whole sweep.
    """
    try:
        return command(cfg)
    except Exception as error:
        if in_sweep():
            if not _pruned(error):  # OptunaPruning logged why it stopped the trial
                log.exception("this job failed: %s", error)
            raise
        if isinstance(error, (SegfwError, OmegaConfBaseException)):
            log.error("%s", message(error))
            raise SystemExit(1) from None
        raise


def _pruned(error: BaseException) -> bool:
    """Whether Optuna's pruner stopped this trial (not a fault); a pruned trial has imported
    Optuna, which nothing else needs to."""
    optuna = sys.modules.get("optuna")
    return optuna is not None and isinstance(error, optuna.TrialPruned)


def message(error: BaseException) -> str:
    """The error's own message, without the worker traceback that torch puts before it when the
    error was raised in a DataLoader worker process."""
    text = str(error)
    if WORKER_TRACEBACK not in text:
        return text
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    return text.rsplit(name, 1)[-1].strip() if name in text else text


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    """Writes metrics as JSON, NaN (a class absent from a split) as null."""
    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def log_headline(metrics: dict[str, Any], path: Path) -> None:
    """Logs the split-level figures (``val/mIoU`` ..., not per class) and where all went."""
    for key, value in sorted(metrics.items()):
        if key.count("/") == 1:
            log.info("%-18s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    log.info("metrics written to %s", path)
