"""``python predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR``: masks for image files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from segfw.commands.config import plain
from segfw.commands.run import CONF, run_command
from segfw.deploy.predict import predict_files
from segfw.deploy.predictor import Predictor


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predicts every image of ``cfg.input`` and writes masks, overlays and ``summary.json`` into
    ``cfg.output`` (``segfw.deploy.predict.predict_files``); ``inference: null`` predicts as the
    checkpoint was validated."""
    settings = plain(cfg)
    predictor = Predictor.from_checkpoint(
        settings["ckpt_path"],
        settings.get("inference"),
        device=settings["device"],
        batch_size=settings["batch_size"],
        max_pixels=settings["max_pixels"],
    )
    return predict_files(
        predictor,
        Path(settings["input"]).expanduser(),
        Path(settings["output"]).expanduser(),
        overlay_alpha=settings["overlay_alpha"],
        max_image_pixels=settings["max_image_pixels"],
        progress=settings["progress"],
    )


# ``segfw-predict`` and ``predict.py``: Hydra's command line on the package's configs; the job (and
# its log file) is named after this module.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="predict")
def main(cfg: DictConfig) -> None:
    run_command(predict, cfg)
