"""Stops a sweep's trial early when Optuna's pruner finds it worse than the others at the same
epoch: the trial reports its per-epoch validation metric to its study."""

from __future__ import annotations

import logging
import math

import optuna
import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn

log = logging.getLogger("segfw")


class OptunaPruning(pl.Callback):
    """Reports ``monitor`` to ``trial`` after each validation and raises ``optuna.TrialPruned``
    when the study's pruner says so; the sweeper then records the trial as pruned.

    Args:
        trial: the trial this run is (:func:`segfw.studies.open_trial`).
        monitor: the metric the study optimizes (``optimized_metric``).
    """

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor

    # on_validation_end, not on_validation_epoch_end: the module computes its epoch metrics in
    # its own on_validation_epoch_end, which Lightning calls after the callbacks'.
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Only training's validations: scoring the best checkpoint afterwards (trainer.validate)
        # would report an epoch again.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not fitting or trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if not math.isfinite(value):
            return  # the pruner cannot rank it; NonFiniteLossError ends a diverged run anyway
        epoch = trainer.current_epoch
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            message = (
                f"trial {self.trial.number} pruned at epoch {epoch}: {self.monitor}={value:.4f}"
            )
            log.info("%s", message)
            raise optuna.TrialPruned(message)
