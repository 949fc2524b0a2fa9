"""From a Hydra config to the library's plain arguments: the one place that reads configs.

Everything below the command edge takes plain values (dicts, lists, numbers, strings), so it works
from a notebook without Hydra. Here a composed config is resolved into plain containers once,
required values (``???``) are checked with one message, derived values are settled (class names,
``loss.class_weights=auto``) before anything is saved, and the objects a command needs are built.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.accelerators import CPUAccelerator

from segfw.data import SegmentationDataModule
from segfw.errors import ConfigError
from segfw.training.callbacks import ProgressBar
from segfw.training.distributed import SameRunDir
from segfw.training.losses import median_frequency_weights
from segfw.training.module import DATA_FACTS, SegmentationModule
from segfw.training.requeue import Requeue, slurm_plugins
from segfw.training.resume import AtomicCheckpointIO, RandomState

log = logging.getLogger("segfw")

# Command-line overrides left out of a run's default wandb name: they do not change the result.
NOT_IN_NAME = ("logger", "ckpt_path", "hydra", "optuna_trial")


def unset_missing_class_facts(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the data facts a data config leaves required (``???``: ``data=folder``'s class
    names and count) unset, for the checkpoint to fill in (``data_for_checkpoint``)."""
    data = cfg.get("data")
    missing = [key for key in DATA_FACTS if data is not None and OmegaConf.is_missing(data, key)]
    if not missing:
        return cfg
    config = cfg.copy()  # the composed config stays as it was
    for key in missing:
        config.data[key] = None
    return config


def plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers, resolved.

    Raises:
        ConfigError: required values (``???``) were not given; the message lists them all.
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        listing = ", ".join(missing)
        raise ConfigError(
            f"Required setting(s) not given: {listing}. Pass them on the command line, e.g. "
            f"{missing[0]}=..., (the config marks them ???)."
        )
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def with_class_names(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``class_names`` defaulted to ``class_0 .. class_{n-1}`` when not given."""
    if data.get("class_names") is not None:
        return data
    names = [f"class_{i}" for i in range(int(data["num_classes"]))]
    log.info("data.class_names not given: naming the classes %s .. %s", names[0], names[-1])
    return {**data, "class_names": names}


def train_settings(cfg: DictConfig) -> dict[str, Any]:
    """The train config as plain values, with the class names settled (``loss.class_weights=auto``
    is settled by :func:`settle_class_weights`, which needs the data)."""
    data = cfg.data
    missing_names = OmegaConf.is_missing(data, "class_names")
    config = cfg.copy()
    if missing_names:
        config.data.class_names = None  # a copy: the composed config stays as it was
    settings = plain(config)
    settings["data"] = with_class_names(settings["data"])
    return settings


def settle_class_weights(
    settings: dict[str, Any], datamodule: SegmentationDataModule
) -> dict[str, Any]:
    """``settings`` with ``loss.class_weights=auto`` replaced by the median-frequency weights of
    the training masks: numbers, not ``auto``, reach the module, the checkpoints and config.yaml."""
    if settings["loss"].get("class_weights") != "auto":
        return settings
    counts = datamodule.class_pixels("train")
    weights = median_frequency_weights(counts.class_pixels, counts.image_pixels)
    log.info("loss.class_weights=auto measured on the train split: %s", weights)
    return {**settings, "loss": {**settings["loss"], "class_weights": weights}}


def build_datamodule(
    data: dict[str, Any] | DictConfig,
    model: dict[str, Any] | DictConfig,
    seed: int = 0,
    **overrides: Any,
) -> SegmentationDataModule:
    """The DataModule of a ``data`` section, at the ``model``'s input size; ``seed`` seeds the
    training order and augmentation."""
    data, model = _values(data), _values(model)
    return SegmentationDataModule(
        **{**data, **overrides}, height=model["height"], width=model["width"], training_seed=seed
    )


def build_module(settings: dict[str, Any] | DictConfig) -> SegmentationModule:
    """The LightningModule of the train settings: model, backbone, data facts, loss, optimization."""
    settings = _values(settings)
    data = settings["data"]
    return SegmentationModule(
        model=settings["model"],
        backbone=settings["backbone"],
        num_classes=data["num_classes"],
        class_names=list(data["class_names"]),
        ignore_index=data["ignore_index"],
        loss=settings["loss"],
        optimizer=settings["optimizer"],
        scheduler=settings["scheduler"],
        palette=data.get("palette"),
        train_metrics=settings.get("train_metrics", False),
        channels_last=settings.get("channels_last", False),
        compile=settings.get("compile", False),
    )


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the callbacks and loggers of their config groups, and
    what every segfw run relies on: its own random-state, run-dir and SLURM-requeue callbacks,
    checkpoints written whole or not at all, and its own sharding of the data."""
    # Requeue first: it stops a requeued run at the start of a step, before any other callback
    # logs for that step (the learning-rate monitor does).
    callbacks: list[pl.Callback] = [Requeue()]
    callbacks += [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += [RandomState(), SameRunDir()]
    if cfg.get("optuna_trial"):
        callbacks.append(pruning_callback(cfg.optuna_trial, cfg.get("optimized_metric")))
    loggers = [build_logger(key, c) for key, c in (cfg.get("logger") or {}).items() if c]
    return _trainer(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=slurm_plugins()
    )


def check_training_precision(trainer: pl.Trainer) -> None:
    """Refuses a training precision that cannot train on the trainer's accelerator.

    Raises:
        ConfigError: ``16-true`` on the CPU. Its float16 weights train without loss scaling, so
            the optimizer's small updates underflow (AdamW's ``eps=1e-8`` is 0 in float16) and the
            loss turns NaN after the first steps; the CPU's float16 kernels are also tens of times
            slower than float32 ones.
    """
    if trainer.precision == "16-true" and isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(
            "trainer.precision=16-true cannot train on the CPU (float16 weights without loss "
            "scaling turn the loss NaN, and CPU float16 kernels are slow): use "
            "trainer.precision=bf16-mixed, bf16-true or 32-true."
        )


def pruning_callback(trial: DictConfig, monitor: str | None) -> pl.Callback:
    """The callback that reports a sweep trial's per-epoch ``optimized_metric`` to its study."""
    # Imported here: only a sweep's trials need Optuna (the sweep extra).
    from segfw.studies import open_trial
    from segfw.training.pruning import OptunaPruning

    if not monitor:
        raise ConfigError(
            "optuna_trial is set but optimized_metric is not: set optimized_metric=val/mIoU "
            "(hparams_search=optuna sets both)"
        )
    pruner = hydra.utils.instantiate(trial.pruner) if trial.get("pruner") else None
    opened = open_trial(str(trial.storage), str(trial.study_name), int(trial.number), pruner)
    return OptunaPruning(opened, monitor)


def build_evaluation_trainer(cfg: DictConfig) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` that scores a checkpoint: no loggers, no checkpoints, and
    segfw's progress bar (Lightning's default bar reads the metrics back after every batch)."""
    return _trainer(cfg.trainer, logger=False, callbacks=[ProgressBar()])


def _trainer(trainer: DictConfig, plugins: list[Any] | None = None, **options: Any) -> pl.Trainer:
    return hydra.utils.instantiate(
        trainer,
        **options,
        plugins=[AtomicCheckpointIO(), *(plugins or [])],
        use_distributed_sampler=False,
    )


def build_logger(key: str, section: DictConfig) -> pl.loggers.Logger:
    """One logger of the ``logger`` group; wandb gets the run's default name and group."""
    if key != "wandb":
        return hydra.utils.instantiate(section)
    name, group = wandb_labels()
    return hydra.utils.instantiate(
        section, name=section.get("name") or name, group=section.get("group") or group
    )


def wandb_labels() -> tuple[str | None, str | None]:
    """The job's default wandb name and group: its command-line overrides (those that change the
    result), and the sweep (multirun dir, after the experiment's name) or the experiment."""
    if not HydraConfig.initialized():
        return None, None
    hydra_config = HydraConfig.get()
    experiment = hydra_config.runtime.choices.get("experiment")
    experiment = None if experiment in (None, "null") else experiment
    group: str | None
    if hydra_config.mode == RunMode.MULTIRUN:
        group = "-".join(filter(None, [experiment, Path(hydra_config.sweep.dir).name]))
    else:
        group = experiment
    overrides = sorted(
        override
        for override in hydra_config.overrides.task
        if not override.lstrip("+~").startswith(NOT_IN_NAME)
    )
    return ",".join(overrides) or None, group


def in_sweep() -> bool:
    """Whether this job is one of a ``-m`` sweep."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def metric_names(class_names: list[str], stages: tuple[str, ...] = ("val", "test")) -> list[str]:
    """The keys of the metrics a run reports."""
    names = ["mIoU", "dice", "pixel_acc", "loss", *(f"IoU/{c}" for c in class_names)]
    return [f"{stage}/{name}" for stage in stages for name in names]


def check_optimized_metric(name: str | None, class_names: list[str], test: bool) -> None:
    """Refuses an ``optimized_metric`` that the run will not report, before it trains.

    Raises:
        ConfigError: naming the value and the metrics there will be.
    """
    if name is None:
        return
    known = metric_names(class_names, ("val", "test") if test else ("val",))
    if name not in known:
        headline = ", ".join(k for k in known if k.count("/") == 1)
        raise ConfigError(
            f"optimized_metric={name!r} is not a metric this run reports; choose one of "
            f"{headline}, or val/IoU/<class name>."
        )


def _values(section: dict[str, Any] | DictConfig) -> dict[str, Any]:
    return plain(section) if isinstance(section, DictConfig) else section
