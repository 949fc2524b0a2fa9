"""What the command-line entry points share: error reporting and the closing summary."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from segfw.errors import ConfigError, NonFiniteLossError

log = logging.getLogger("segfw")


def run_task(task: Callable[[DictConfig], dict[str, Any]], cfg: DictConfig) -> dict[str, Any]:
    """Runs a task; bad input ends the program with its message instead of a traceback."""
    try:
        metrics = task(cfg)
    except (ConfigError, NonFiniteLossError) as error:
        log.error("%s", error)
        raise SystemExit(1) from None
    headline = {k: v for k, v in metrics.items() if k.count("/") == 1}
    for key, value in sorted(headline.items()):
        log.info("%-18s %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    log.info("metrics written to %s/metrics.json", cfg.output_dir)
    return metrics
