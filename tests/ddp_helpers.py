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
