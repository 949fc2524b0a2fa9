"""``python predict.py ckpt_path=PATH input=DIR_OR_FILE output=DIR [data=NAME]``: masks for
image files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from segfw.commands.config import plain, unset_missing_class_facts
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import CONF, run_command
from segfw.deploy.predict import predict_files
from segfw.deploy.predictor import Predictor
from segfw.training.module import DATA_FACTS, data_for_checkpoint


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predicts every image of ``cfg.input`` and writes masks, overlays and ``summary.json`` into
    ``cfg.output`` (``segfw.deploy.predict.predict_files``); ``inference: null`` predicts as the
    checkpoint was validated.

    Raises:
        ConfigError: ``cfg.data``, if given, names other classes or another ``ignore_index`` than
            the checkpoint's.
    """
    config, facts = _without_data(cfg)
    settings = plain(config)
    predictor = Predictor.from_checkpoint(
        settings["ckpt_path"],
        settings.get("inference"),
        device=settings["device"],
        batch_size=settings["batch_size"],
        max_pixels=settings["max_pixels"],
    )
    if facts is not None:
        data_for_checkpoint(predictor.module.hparams, facts, settings["ckpt_path"])
    return predict_files(
        predictor,
        Path(settings["input"]).expanduser(),
        Path(settings["output"]).expanduser(),
        overlay_alpha=settings["overlay_alpha"],
        max_image_pixels=settings["max_image_pixels"],
        progress=settings["progress"],
    )


def _without_data(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any] | None]:
    """``cfg`` without its ``data`` section, and that section's class facts (``DATA_FACTS``, and
    ``format`` to name it; those it leaves required, ``???``, as ``None``). Predicting reads no
    dataset, so the rest of the section (``data.root`` ...) need not be given."""
    data = cfg.get("data")
    if data is None:
        return cfg, None
    settled = unset_missing_class_facts(cfg).data
    values = cast(dict[str, Any], OmegaConf.to_container(settled, resolve=True))
    facts = {key: values[key] for key in DATA_FACTS}
    config = cfg.copy()  # the composed config stays as it was
    with open_dict(config):
        del config["data"]
    return config, {"format": values["format"], **facts}


def main() -> None:
    """The command line of ``segfw-predict`` and ``predict.py``: Hydra's, on the package's configs,
    with an override of a key that is not in the config named beside the valid keys."""
    exit_on_unknown_keys("predict", sys.argv[1:])
    _hydra_main()


# The Hydra job is named after this module (``predict``): the run dir's log is ``predict.log``.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    run_command(predict, cfg)
