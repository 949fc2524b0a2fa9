"""The train and evaluate tasks: config in, metrics out. Entry points and sweeps call these."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from segfw.data import SegmentationDataModule
from segfw.errors import ConfigError
from segfw.module import SegmentationModule

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains a model, then scores its best checkpoint on the validation and test splits.

    Writes into ``cfg.output_dir``: ``config.yaml`` (the resolved config), ``checkpoints/`` (best
    by ``val/mIoU`` and ``last.ckpt``), the loggers' files, and ``metrics.json``.

    Returns:
        Flat metrics of the best checkpoint: ``val/mIoU``, ``val/IoU/<class>``, ``val/dice``,
        ``val/pixel_acc``, ``val/loss`` and the same under ``test/``.
    """
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule = build_datamodule(cfg.data, cfg.model)
    module = build_module(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    checkpoint = trainer.checkpoint_callback
    best = (checkpoint.best_model_path if checkpoint else "") or None
    if best:
        log.info("scoring the best checkpoint: %s", best)
    else:
        log.warning(
            "No checkpoint was written (fast_dev_run, or checkpointing disabled): scoring the "
            "weights in memory."
        )
    metrics = _first(trainer.validate(module, datamodule=datamodule, ckpt_path=best))
    if datamodule.has_split("test"):
        metrics |= _first(trainer.test(module, datamodule=datamodule, ckpt_path=best))
    metrics["best_checkpoint"] = best or ""
    write_metrics(metrics, output_dir / "metrics.json")
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Scores a checkpoint on one split of its training data (or of ``cfg.data`` if given).

    Returns:
        Flat metrics under ``<split>/``, also written to ``<output_dir>/metrics.json``.
    """
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a file; pass a .ckpt written by train.py."
        )
    if cfg.split not in ("val", "test"):
        raise ConfigError(f"split={cfg.split!r}: choose val or test.")
    module = SegmentationModule.load_from_checkpoint(path, map_location="cpu")
    if cfg.get("data") is not None:
        datamodule = build_datamodule(cfg.data, module.hparams.model)
    else:
        datamodule = SegmentationDataModule.load_from_checkpoint(path, map_location="cpu")
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    run = trainer.validate if cfg.split == "val" else trainer.test
    metrics = _first(run(module, datamodule=datamodule))
    metrics["checkpoint"] = str(path)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(metrics, output_dir / "metrics.json")
    return metrics


def build_datamodule(data: DictConfig | dict, model: DictConfig | dict) -> SegmentationDataModule:
    """The DataModule of a ``data`` config, at the ``model``'s input size."""
    return SegmentationDataModule(**_plain(data), height=model["height"], width=model["width"])


def build_module(cfg: DictConfig) -> SegmentationModule:
    """The LightningModule of a train config: model, backbone, data facts, loss and optimization."""
    return SegmentationModule(
        model=_plain(cfg.model),
        backbone=_plain(cfg.backbone),
        num_classes=cfg.data.num_classes,
        class_names=list(cfg.data.class_names),
        ignore_index=cfg.data.ignore_index,
        loss=_plain(cfg.loss),
        optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.scheduler),
        palette=_plain(cfg.data.get("palette")),
        train_metrics=cfg.get("train_metrics", False),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks and loggers of their config groups."""
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    """Writes metrics as JSON, NaN (a class absent from a split) as null."""
    clean = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def _first(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        k: float(v) if isinstance(v, (int, float, torch.Tensor)) else v
        for k, v in results[0].items()
    }


def _plain(section: Any) -> Any:
    """A config section as plain Python containers, so checkpoints load without OmegaConf."""
    if isinstance(section, DictConfig) or OmegaConf.is_list(section):
        return OmegaConf.to_container(section, resolve=True)
    return section
