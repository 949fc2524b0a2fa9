"""Resuming an interrupted run: its last checkpoint, and the random state that Lightning leaves out.

A resumed run continues from ``<run dir>/checkpoints/last.ckpt`` (weights, optimizer, scheduler,
epoch and step counters, and, through :class:`RandomState`, every process's random generators), so
that it ends with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn

from segfw.errors import ConfigError


def resolve_ckpt_path(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """The checkpoint that ``trainer.fit`` starts from.

    ``last`` means the run directory's own ``checkpoints/last.ckpt``. Lightning, given ``last`` and
    finding nothing (a fresh Hydra run dir), only warns and trains from scratch; here that is an
    error, since the user asked to continue a run.

    Args:
        ckpt_path: ``None`` (a fresh start, or on SLURM the automatic requeue checkpoint), a file,
            or ``last``.
        trainer: the Trainer whose ModelCheckpoint callbacks write the run's checkpoints.

    Returns:
        ``ckpt_path`` itself, or for ``last`` the path of the run's ``last.ckpt``.

    Raises:
        ConfigError: ``last`` without a ``last.ckpt`` to continue from, or a SLURM job requeued
            into a run dir that holds no requeue checkpoint.
    """
    if ckpt_path is None:
        _check_requeued_job_can_resume(trainer)
        return None
    if ckpt_path != "last":
        return ckpt_path
    dirpaths = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    if not dirpaths or not all(dirpaths):
        raise ConfigError(
            "ckpt_path=last needs the checkpoint callbacks of segfw/conf/callbacks/default.yaml, with "
            "their dirpath; or pass ckpt_path=<a .ckpt file>."
        )
    directories = [Path(d) for d in dirpaths if d]
    name = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    found = [d / name for d in directories if (d / name).is_file()]
    if not found:
        raise ConfigError(
            f"ckpt_path=last: there is no {directories[0] / name}, so there is no run to continue "
            f"in {directories[0].parent}. A run resumes in its own directory: repeat the "
            f"interrupted run's command with ckpt_path=last hydra.run.dir=<its run dir> (for "
            f"example logs/runs/2024-05-01_12-00-00), or pass ckpt_path=<a .ckpt file>."
        )
    return str(found[0])


def _check_requeued_job_can_resume(trainer: pl.Trainer) -> None:
    """On a requeued SLURM job, Lightning resumes from ``hpc_ckpt_*.ckpt`` in the run dir; a run
    dir that changed with the requeue (a new timestamp) would silently restart from scratch."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    if restarts and not any(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
        raise ConfigError(
            f"This SLURM job was requeued (SLURM_RESTART_COUNT={restarts}) but its run dir "
            f"{trainer.default_root_dir} holds no hpc_ckpt_*.ckpt to resume from. Give the job a "
            f"run dir that survives the requeue: hydra.run.dir=logs/runs/$SLURM_JOB_ID."
        )


class RandomState(pl.Callback):
    """Saves the random generators of every process in checkpoints, and restores them on resume.

    Lightning checkpoints hold the weights, optimizer, scheduler and loop counters, but not the
    generators that draw the shuffling order and the augmentations; without them a resumed run
    would see other batches than an uninterrupted one. Each process's state is kept, since under
    DDP each draws the augmentations of its own samples.
    """

    def state_dict(self) -> dict[str, Any]:
        state = _collect()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Lightning dumps checkpoints on every rank and writes rank 0's: gather into it.
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            return {"ranks": states}
        return {"ranks": [state]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict["ranks"]
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        if len(states) != world_size:
            rank_zero_warn(
                f"The checkpoint holds the random state of {len(states)} process(es), this run has "
                f"{world_size}: training resumes with fresh random state, so shuffling and "
                f"augmentation differ from an uninterrupted run."
            )
            return
        _restore(states[dist.get_rank() if distributed else 0])


def _collect() -> dict[str, Any]:
    # Plain Python values only: checkpoints load with torch.load(weights_only=True), which refuses
    # numpy arrays, and all_gather_object cannot carry tensors (torch 2.14).
    state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, position, has_gauss, cached_gaussian = state
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else [],
    }


def _restore(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian)
    )
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint into a temporary file beside it, then renames it into place.

    A process killed while writing (SIGKILL, out of memory, preemption) leaves the previous
    checkpoint whole and a stray ``.partial-checkpoint-<pid>``, never a truncated ``last.ckpt``
    that the next ``ckpt_path=last`` could not read. The rename is atomic on every local file system;
    the file is synced to disk before it, and the directory after it, so that a crash of the
    machine keeps one whole checkpoint too.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        target = Path(path)
        if "://" in str(path):  # a remote store (s3://...): its own semantics
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        # A name that Lightning's search for the newest hpc_ckpt_<n>.ckpt does not match.
        partial = target.with_name(f".partial-checkpoint-{os.getpid()}")
        super().save_checkpoint(checkpoint, partial, storage_options)
        # The data reaches the disk before the rename that puts it in place: otherwise a crash of
        # the node (not only of the process) can keep the rename and lose the data, leaving an
        # empty or truncated last.ckpt where the previous one was whole.
        with open(partial, "rb") as file:
            os.fsync(file.fileno())
        os.replace(partial, target)
        # The rename is a change of the directory, durable once the directory is synced too.
        if os.name == "posix":
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
