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
from pytorch_lightning.utilities import rank_zero_only

from segfw.choices import choose
from segfw.data import SegmentationDataModule
from segfw.errors import ConfigError
from segfw.inference.modes import build_inference, full_resolution_loader
from segfw.training.callbacks import ProgressBar
from segfw.training.distributed import SameRunDir, check_launch
from segfw.training.loggers import closing_wandb_run
from segfw.training.losses import median_frequency_weights
from segfw.training.module import SegmentationModule
from segfw.training.resume import RandomState, resolve_ckpt_path
from segfw.training.run_info import log_run_info

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Trains a model, then scores its best checkpoint on the validation and test splits.

    Writes into ``cfg.output_dir``: ``config.yaml`` (the resolved config), ``checkpoints/`` (best
    by ``val/mIoU`` and ``last.ckpt``), the loggers' files, and ``metrics.json``.

    Returns:
        Flat metrics of the best checkpoint: ``val/mIoU``, ``val/IoU/<class>``, ``val/dice``,
        ``val/pixel_acc``, ``val/loss`` and the same under ``test/``.
    """
    # A wandb run outlives its Trainer, and the next WandbLogger in the process would log into it:
    # finish it after every run, failed or not, so that each job of a sweep gets its own.
    with closing_wandb_run():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg.data, cfg.model)
    if cfg.loss.get("class_weights") == "auto":
        # Numbers, not "auto", reach the module: checkpoints and config.yaml keep them.
        counts = datamodule.class_pixels("train")
        cfg.loss.class_weights = median_frequency_weights(counts.class_pixels, counts.image_pixels)
        log.info("loss.class_weights=auto measured on the train split: %s", cfg.loss.class_weights)
    # Under DDP every process runs this function; the first writes the run's files.
    if rank_zero_only.rank == 0:
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)

    module = build_module(cfg)
    trainer = build_trainer(cfg)
    check_launch(trainer, cfg.trainer.get("sync_batchnorm", False))
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), trainer)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    log_run_info(cfg, module, trainer.loggers)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

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
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir / "metrics.json")
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Scores a checkpoint on one split of its training data (or of ``cfg.data`` if given).

    With ``inference`` set (``conf/inference/``), each image is predicted at its own size in that
    mode and scored against its unresized labels; otherwise as validation does while training.

    Returns:
        Flat metrics under ``<split>/``, also written to ``<output_dir>/metrics.json``.
    """
    path = Path(cfg.ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={str(path)!r} is not a file; pass a .ckpt written by train.py."
        )
    choose(("val", "test"), cfg.split, "split")
    module = SegmentationModule.load_from_checkpoint(path, map_location="cpu")
    # With an inference mode, images and labels load unresized: scores at the labels' resolution.
    inference = cfg.get("inference")
    unresized = {} if inference is None else {"eval_mode": "whole"}
    if cfg.get("data") is not None:
        datamodule = build_datamodule({**_plain(cfg.data), **unresized}, module.hparams.model)
    else:
        datamodule = SegmentationDataModule.load_from_checkpoint(
            path, map_location="cpu", **unresized
        )
    trainer = build_evaluation_trainer(cfg)
    run = trainer.validate if cfg.split == "val" else trainer.test
    if inference is None:
        metrics = _first(run(module, datamodule=datamodule))
    else:
        module.inference = build_inference(inference, module)
        metrics = _first(run(module, dataloaders=full_resolution_loader(datamodule, cfg.split)))
        metrics["inference"] = _plain(inference)
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
        channels_last=cfg.get("channels_last", False),
        compile=cfg.get("compile", False),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks and loggers of their config groups, and
    the two that resuming and multi-process runs rely on."""
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [RandomState(), SameRunDir()]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def build_evaluation_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` that scores a checkpoint: no loggers, no checkpoints, and
    segfw's progress bar (Lightning's default bar reads the metrics back after every batch)."""
    return hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[ProgressBar()])


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
