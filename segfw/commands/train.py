"""``segfw-train`` (or ``python train.py``) ``[group=option ...] [key=value ...]``: train, then
score the best checkpoint."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
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
    check_training_precision,
    in_sweep,
    settle_class_weights,
    train_settings,
)
from segfw.commands.evaluate import score
from segfw.commands.overrides import exit_on_unknown_keys
from segfw.commands.run import CONF, log_headline, run_command, write_metrics
from segfw.lightning_compat import mid_epoch_resume_warning_ignored
from segfw.models import backbone_spec
from segfw.training.callbacks import log_worst_cases
from segfw.training.distributed import check_launch
from segfw.training.loggers import closing_wandb_run
from segfw.training.module import SegmentationModule, data_for_checkpoint, load_checkpoint
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
    check_training_precision(trainer)
    check_launch(trainer, settings["trainer"].get("sync_batchnorm", False), in_sweep())
    ckpt_path = resolve_ckpt_path(settings.get("ckpt_path"), trainer)
    if ckpt_path:
        _check_resumed_data(ckpt_path, data)
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


def _check_resumed_data(ckpt_path: str, data: dict[str, Any]) -> None:
    """Refuses to resume a checkpoint on data with other classes or another ignore_index: Lightning
    would fail loading its classifier deep inside ``trainer.fit``, or train on with the labels'
    meaning changed."""
    hparams = load_checkpoint(ckpt_path)["hyper_parameters"]
    data_for_checkpoint(hparams, data, ckpt_path, resuming=True)


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


# Options that need the extra segfw[sweep] (pyproject.toml), with the modules it brings for each:
# without them Hydra fails while composing, in a traceback that names no package to install.
SWEEP_EXTRA = {
    "hparams_search=optuna": ("optuna",),
    "hydra/sweeper=segfw_optuna": ("optuna",),
    "hydra/launcher=submitit_local": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
    "hydra/launcher=submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "submitit"),
}


def require_sweep_extra(args: list[str]) -> None:
    """Ends the program with the install command when an option among ``args`` needs the sweep
    extra and it is not installed."""
    for arg in args:
        for module in SWEEP_EXTRA.get(arg.lstrip("+"), ()):
            try:
                installed = importlib.util.find_spec(module) is not None
            except ImportError:  # its parent package (hydra_plugins) is missing too
                installed = False
            if not installed:
                sys.exit(
                    f"{arg} needs the sweep extra ({module} is not installed): "
                    "pip install -e '.[sweep]' in a clone, or pip install 'segfw[sweep]'"
                )


def rank_overrides(args: list[str]) -> list[str]:
    """For a process other than the first of a run whose processes torchrun or srun started,
    the Hydra overrides that keep it from writing the run dir's ``.hydra/`` and ``train.log``
    again: its log goes to ``train_ddp_process_<rank>.log``, as Lightning's own relaunched
    processes do (it passes these overrides itself, so they are left alone when present)."""
    rank = int(os.environ.get("RANK") or 0)
    if not rank and int(os.environ.get("SLURM_NTASKS") or 1) > 1:
        rank = int(os.environ.get("SLURM_PROCID") or 0)
    if not rank or any(a.startswith("hydra.output_subdir=") for a in args):
        return []
    return [
        "hydra.output_subdir=null",
        # The log file is <run dir>/<job name>.log (Hydra's job_logging), as Lightning names it.
        f"hydra.job.name=train_ddp_process_{rank}",
    ]


def main() -> None:
    """The command line of ``segfw-train`` and ``train.py``: Hydra's (overrides, ``-m``,
    ``--config-dir``, ``--cfg job`` ...) on the package's configs.

    Lightning's DDP launcher starts the other ranks by running ``sys.argv`` again with the same
    Python (``python /venv/bin/segfw-train ...`` for the console script), with the overrides that
    point them at the first rank's run dir; they come through here as well.
    """
    require_sweep_extra(sys.argv[1:])
    exit_on_unknown_keys("train", sys.argv[1:])
    sys.argv += rank_overrides(sys.argv[1:])
    # segfw/conf/hydra/launcher/submitit_*.yaml share their names with the plugin's configs on
    # purpose, so that Hydra checks their keys against the plugin's schema; Hydra warns about that
    # pairing. Filtered by the program, not when the library is imported.
    warnings.filterwarnings(
        "ignore", r"\s*'hydra/launcher/submitit_.*ConfigStore schema", UserWarning
    )
    _hydra_main()


# The Hydra job is named after this module (``train``): the run dir's log is ``train.log``.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    metrics = run_command(train, cfg)
    # A sweeper (hparams_search) optimizes the value returned here; train checked the name.
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
