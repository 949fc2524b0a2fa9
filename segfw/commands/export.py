"""``python export.py ckpt_path=PATH format=onnx|torchscript output=DIR``: a deployable model."""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from segfw.commands.config import plain
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import CONF, run_command
from segfw.deploy.export import export as export_model
from segfw.training.module import SegmentationModule


def export(cfg: DictConfig) -> dict[str, Any]:
    """Exports ``cfg.ckpt_path`` as ``segfw.deploy.export.export`` says; returns the metadata."""
    settings = plain(cfg)
    module = SegmentationModule.from_checkpoint(settings["ckpt_path"])
    return export_model(
        module,
        settings["format"],
        settings["output"],
        name=settings["name"],
        dynamic_size=settings["dynamic_size"],
        opset=settings["opset"],
        tolerance=settings["tolerance"],
        source=str(settings["ckpt_path"]),
    )


def main() -> None:
    """The command line of ``segfw-export`` and ``export.py``: Hydra's, on the package's configs,
    with an override of a key that is not in the config named beside the valid keys."""
    exit_on_unknown_keys("export", sys.argv[1:])
    _hydra_main()


# The Hydra job is named after this module (``export``): the run dir's log is ``export.log``.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    run_command(export, cfg)
