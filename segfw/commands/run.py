"""What the command-line entry points share: error reporting and the closing summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from segfw.errors import ConfigError, NonFiniteLossError

log = logging.getLogger("segfw")


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """Runs a task; bad input ends the program with its message instead of a traceback.

    In a ``-m`` sweep a failing job raises instead, after logging its traceback into the job's own
    log: Hydra records an exception as that job's failure and goes on with the next job (the Optuna
    sweeper marks the trial failed), where SystemExit would end the whole sweep.
    """
    try:
        metrics = task(cfg)
    except Exception as error:
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            log.exception("this job failed: %s", error)
            raise
        if isinstance(error, (ConfigError, NonFiniteLossError)):
            log.error("%s", error)
            raise SystemExit(1) from None
        raise
    headline = {k: v for k, v in metrics.items() if k.count("/") == 1}
    for key, value in sorted(headline.items()):
        log.info("%-18s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    log.info("metrics written to %s/metrics.json", cfg.output_dir)
    return metrics
