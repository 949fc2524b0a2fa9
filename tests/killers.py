"""Callbacks that kill their own training process with SIGKILL at a chosen point, for the resume
tests: loaded by ``python train.py +callbacks.killer._target_=killers.KillAt ...`` (tests/ on the
PYTHONPATH). SIGKILL runs no handler and no ``finally``: what survives is what a real kill leaves."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl

from segfw.training import resume


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAt(pl.Callback):
    """Kills the process at one point of a run.

    Args:
        point: ``train_batch`` (after optimizer step ``step``), ``validation_batch`` (during the
            validation after step ``step``, after its first batch), or ``checkpoint`` (while
            writing the first checkpoint after step ``step``, its file written but not yet in
            place).
        step: the global step at or after which to kill.
    """

    def __init__(self, point: str, step: int) -> None:
        self.point, self.step = point, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.point == "train_batch" and trainer.global_step == self.step:
            _die()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        if (
            self.point == "validation_batch"
            and not trainer.sanity_checking
            and trainer.global_step >= self.step
        ):
            _die()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.point == "checkpoint" and trainer.global_step >= self.step:
            # This checkpoint is being written: die once its bytes are in the temporary file,
            # before it replaces the previous one (segfw.training.resume.AtomicCheckpointIO).
            resume.os.replace = lambda *args: _die()
