"""``python -m segfw.data.inspect [train.py overrides]``: check a dataset and preview it.

Composes the train config (``segfw/conf/inspect.yaml`` extends ``segfw/conf/train.yaml``), so every train.py
override works here; runs ``segfw.data.survey`` on its data, prints the report, writes
``report.json`` and ``preview_<split>.png`` into the run directory, and exits with status 1 when
it found a problem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from segfw.commands.config import build_datamodule, train_settings
from segfw.commands.overrides import CONF_DIR
from segfw.commands.run import run_command
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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="inspect")
def main(cfg: DictConfig) -> None:
    report = run_command(inspect, cfg)
    if any(entry["problems"] for entry in report["splits"].values()):
        log.error("problems found: see above")
        raise SystemExit(1)
