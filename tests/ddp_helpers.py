"""A callback for the DDP tests, loaded by every rank of a `python train.py trainer=ddp` run."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class SaveRankWeights(pl.Callback):
    """Writes each process's weights after fitting to ``<directory>/rank<global rank>.pt``: the
    checkpoint holds rank 0's only."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.state_dict(), self.directory / f"rank{trainer.global_rank}.pt")


class NanLossAt(pl.Callback):
    """Makes the training loss NaN on one rank at one step, as when one rank's batch diverges:
    the other ranks' losses stay finite.

    Args:
        step: the global step (optimizer steps done) whose loss becomes NaN.
        rank: the global rank whose loss becomes NaN.
    """

    def __init__(self, step: int, rank: int = 1) -> None:
        self.step, self.rank = step, rank

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return

        def nan_here(module: torch.nn.Module, inputs: object, loss: torch.Tensor) -> torch.Tensor:
            mine = trainer.global_rank == self.rank and trainer.global_step == self.step
            return loss * float("nan") if trainer.training and mine else loss

        # A hook, not another criterion: the state dict stays the one train.py saves.
        pl_module.criterion.register_forward_hook(nan_here)
