"""``python train.py [group=option ...] [key=value ...]``: train, then score the best checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from segfw.commands.config import (
    build_datamodule,
    build_module,
    build_trainer,
    check_optimized_metric,
    in_sweep,
    settle_class_weights,
    train_settings,
)
from segfw.commands.evaluate import score
from segfw.commands.run import log_headline, write_metrics
from segfw.lightning_compat import mid_epoch_resume_warning_ignored
from segfw.models import backbone_spec
from segfw.training.callbacks import log_worst_cases
from segfw.training.distributed import check_launch
from segfw.training.loggers import closing_wandb_run
from segfw.training.module import SegmentationModule
from segfw.training.resume import resolve_ckpt_path
from segfw.training.run_info import log_run_info
from segfw.visualize import checkpoint_palette

log = logging.getLogger("segfw")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Trains a model, then scores its best checkpoint on the validation and test splits.

    Writes into ``cfg.output_dir``: ``config.yaml`` (the resolved config, derived values
    settled), ``checkpoints/`` (best by ``val/mIoU`` and ``last.ckpt``), the loggers' files,
    ``metrics.json``, ``per_image.csv`` and ``worst_cases/<split>.png``.

    Returns:
        Flat metrics of the best checkpoint: ``val/mIoU``, ``val/IoU/<class>``, ``val/dice``,
        ``val/pixel_acc``, ``val/loss`` and the same under ``test/``; ``best_checkpoint``.
    """
    # A wandb run outlives its Trainer, and the next WandbLogger in the process would log into it:
    # finish it after every run, failed or not, so that each job of a sweep gets its own.
    with closing_wandb_run():
        return _train(cfg)


def _train(cfg: DictConfig) -> dict[str, Any]:
    settings = train_settings(cfg)
    data, model = settings["data"], settings["model"]
    output_dir = Path(settings["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(data, model, seed=settings["seed"])
    stages = ("val", "test") if datamodule.has_split("test") else ("val",)
    check_optimized_metric(settings.get("optimized_metric"), data["class_names"], "test" in stages)
    # Every split the run will read is opened and checked now, not found missing after training.
    datamodule.check_splits(("train", *stages))
    settings = settle_class_weights(settings, datamodule)
    _say_how_the_encoder_starts(settings["backbone"], data["format"])
    # Under DDP every process runs this function; the first writes the run's files.
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # set by Lightning at import
        text = yaml.safe_dump(settings, sort_keys=False, allow_unicode=True)
        (output_dir / "config.yaml").write_text(text)
    pl.seed_everything(settings["seed"], workers=True)

    module = build_module(settings)
    trainer = build_trainer(cfg)
    check_launch(trainer, settings["trainer"].get("sync_batchnorm", False), in_sweep())
    ckpt_path = resolve_ckpt_path(settings.get("ckpt_path"), trainer)
    if ckpt_path:
        log.info("resuming from %s", ckpt_path)
    log_run_info(settings, module, trainer.loggers)
    # A checkpoint saved inside an epoch (a SLURM requeue) resumes exactly: the datamodule keeps
    # the training order's place, where Lightning's warning looks only at the loader.
    with mid_epoch_resume_warning_ignored():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    checkpoint = trainer.checkpoint_callback
    best = (checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else "") or None
    if best:
        log.info("scoring the best checkpoint: %s", best)
        scoring = SegmentationModule.from_checkpoint(
            best, map_location=module.device, per_image=True
        )
    else:
        log.warning(
            "No best checkpoint was written (no validation ran, fast_dev_run, or checkpointing "
            "disabled): scoring the weights in memory."
        )
        scoring = SegmentationModule(**{**module.hparams, "per_image": True}).to(module.device)
        scoring.load_state_dict(module.state_dict())
    metrics, cases = score(
        trainer, scoring, datamodule, stages, output_dir, settings["worst_cases"], ckpt_path=best
    )
    if not any(key.startswith("val/") for key in metrics):
        log.warning(
            "No validation figures exist for this run (trainer.limit_val_batches=0, or an empty "
            "validation loader); its checkpoints are in %s.",
            checkpoint.dirpath if isinstance(checkpoint, ModelCheckpoint) else output_dir,
        )
    metrics["best_checkpoint"] = best or ""
    if trainer.is_global_zero:
        write_metrics(metrics, output_dir / "metrics.json")
        log_headline(metrics, output_dir / "metrics.json")
        if cases.get("val"):
            palette = checkpoint_palette(scoring.hparams)
            step = trainer.global_step
            log_worst_cases(trainer.loggers, "val", cases["val"], palette, scoring.hparams, step)
    return metrics


def _say_how_the_encoder_starts(backbone: dict[str, Any], data_format: str) -> None:
    """Logs the encoder's initialization; warns when a real dataset trains from random weights,
    which costs tens of mIoU points (the embedded shapes need no ImageNet features)."""
    weights = backbone.get("weights")
    if weights is not None:
        log.info("backbone %s starts from %s weights", backbone["name"], weights)
        return
    released = backbone_spec(backbone).imagenet
    reason = (
        "backbone.weights=null"
        if released
        else f"no ImageNet weights have been released for {backbone['name']}"
    )
    level = logging.INFO if data_format == "shapes" else logging.WARNING
    hint = " (backbone.weights=imagenet starts from ImageNet features)" if released else ""
    log.log(level, "backbone %s starts from random weights: %s%s", backbone["name"], reason, hint)
