"""Checks that keep a multi-process (DDP) run in one Hydra run directory.

Lightning starts the other ranks of ``python train.py trainer=ddp`` itself, re-running the script
with the first rank's ``hydra.run.dir``. Under ``torchrun`` or ``srun`` every rank starts on its
own and composes its own config, so each must be given the same ``hydra.run.dir``; and inside a
``-m`` sweep Lightning's relaunch would re-run the whole sweep in every rank.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.accelerators import CPUAccelerator

from segfw.errors import ConfigError
from segfw.lightning_compat import relaunches_script


def check_launch(trainer: pl.Trainer, sync_batchnorm: bool, in_sweep: bool = False) -> None:
    """Refuses multi-process settings that would fail later, or worse, run wrongly.

    Args:
        trainer: the Trainer about to fit.
        sync_batchnorm: ``trainer.sync_batchnorm`` of the config.
        in_sweep: the run is one job of a ``-m`` sweep.

    Raises:
        ConfigError: synchronized batch norm on CPU processes (torch has no CPU kernel for it), or
            ``-m`` together with a multi-process trainer whose ranks Lightning starts itself.
    """
    if (
        sync_batchnorm
        and trainer.world_size > 1
        and isinstance(trainer.accelerator, CPUAccelerator)
    ):
        raise ConfigError(
            "trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm has no CPU kernel. "
            "With trainer.accelerator=cpu set trainer.sync_batchnorm=false."
        )
    if in_sweep and relaunches_script(trainer):
        raise ConfigError(
            f"A -m sweep cannot run trainer=ddp with {trainer.world_size} processes that Lightning "
            f"starts itself: it would re-run the whole sweep in every rank. Run the trials as "
            f"cluster jobs whose processes SLURM starts (hydra/launcher=submitit_slurm with "
            f"hydra.launcher.tasks_per_node=<GPUs per node>), or sweep on one device per trial."
        )


class SameRunDir(pl.Callback):
    """Stops a multi-process run whose ranks write into different run directories.

    Ranks started by torchrun or srun each compose a Hydra run dir from the clock; if they start in
    different seconds they would split one run over several directories.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        directories: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(directories, str(trainer.default_root_dir))
        if len(set(directories)) > 1:
            listing = ", ".join(f"rank {r}: {d}" for r, d in enumerate(directories))
            raise ConfigError(
                f"The processes of this run write into different run dirs ({listing}). Give every "
                f"rank the same one: hydra.run.dir=logs/runs/$SLURM_JOB_ID under srun, "
                f"hydra.run.dir=logs/runs/<name> under torchrun."
            )
