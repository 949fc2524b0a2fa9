"""``python -m segfw.data.inspect [train.py overrides]``: check a dataset and preview it.

Composes the train config (``segfw/conf/inspect.yaml`` extends ``segfw/conf/train.yaml``), so every train.py
override works here; runs ``segfw.data.survey`` on its data, prints the report, writes
``report.json`` and ``preview_<split>.png`` into the run directory, and exits with status 1 when
it found a problem.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from segfw.commands.config import build_datamodule, train_settings
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import CONF, run_command
from segfw.data.survey import format_report, survey

log = logging.getLogger("segfw.inspect")


def inspect(cfg: DictConfig) -> dict[str, Any]:
    """Surveys the data of a train config; returns the report."""
    settings = train_settings(cfg)
    datamodule = build_datamodule(settings["data"], settings["model"])
    output_dir = Path(settings["output_dir"])
    report = survey(datamodule, output_dir, settings["preview_images"])
    log.info("\n%s", format_report(report, list(settings["data"]["class_names"])))
    log.info("report written to %s", output_dir / "report.json")
    return report


def main() -> None:
    """The command line of ``python -m segfw.data.inspect``: Hydra's, on the package's configs,
    with an override of a key that is not in the config named beside the valid keys."""
    exit_on_unknown_keys("inspect", sys.argv[1:])
    _hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="inspect")
def _hydra_main(cfg: DictConfig) -> None:
    report = run_command(inspect, cfg)
    if any(entry["problems"] for entry in report["splits"].values()):
        log.error("problems found: see above")
        raise SystemExit(1)
