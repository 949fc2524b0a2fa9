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
from segfw.training.requeue import slurm_restarts


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
        ``ckpt_path`` itself, or for ``last`` the path of the run's ``last.ckpt``; for ``None`` in
        a requeued SLURM job without a requeue checkpoint, its ``last.ckpt`` too.

    Raises:
        ConfigError: ``last`` without a ``last.ckpt`` to continue from, or a SLURM job requeued
            into a run dir that holds neither a requeue checkpoint nor ``last.ckpt``.
    """
    if ckpt_path is None:
        return _requeued_job_checkpoint(trainer)
    if ckpt_path != "last":
        return ckpt_path
    directories = _checkpoint_directories(trainer)
    if not directories:
        raise ConfigError(
            "ckpt_path=last needs the checkpoint callbacks of segfw/conf/callbacks/default.yaml, with "
            "their dirpath; or pass ckpt_path=<a .ckpt file>."
        )
    found = _last_checkpoints(directories)
    if not found:
        raise ConfigError(
            f"ckpt_path=last: there is no {directories[0] / LAST}, so there is no run to continue "
            f"in {directories[0].parent}. A run resumes in its own directory: repeat the "
            f"interrupted run's command with ckpt_path=last hydra.run.dir=<its run dir> (for "
            f"example logs/runs/2024-05-01_12-00-00), or pass ckpt_path=<a .ckpt file>."
        )
    return str(found[0])


LAST = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"


def _checkpoint_directories(trainer: pl.Trainer) -> list[Path]:
    """Where the run's ModelCheckpoint callbacks write; empty if one of them has no dirpath."""
    dirpaths = [c.dirpath for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    return [Path(d) for d in dirpaths if d] if dirpaths and all(dirpaths) else []


def _last_checkpoints(directories: list[Path]) -> list[Path]:
    return [d / LAST for d in directories if (d / LAST).is_file()]


def _requeued_job_checkpoint(trainer: pl.Trainer) -> str | None:
    """What a requeued SLURM job started with ``ckpt_path=null`` resumes from.

    After segfw's own requeue (:class:`segfw.training.requeue.Requeue`), Lightning finds the run
    dir's ``hpc_ckpt_<n>.ckpt`` itself: ``None``. A job that SLURM requeued on its own (a node
    failure, a preemption) has none, and continues from its ``last.ckpt``, its last finished
    epoch. A run dir that changed with the requeue (a new timestamp) holds neither, and would
    silently restart from scratch.
    """
    restarts = slurm_restarts()
    if not restarts or any(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
        return None
    found = _last_checkpoints(_checkpoint_directories(trainer))
    if found:
        return str(found[0])
    raise ConfigError(
        f"This SLURM job was requeued (SLURM_RESTART_COUNT={restarts}) but its run dir "
        f"{trainer.default_root_dir} holds neither an hpc_ckpt_*.ckpt nor a checkpoints/{LAST} to "
        f"resume from. Give the job a run dir that survives the requeue: "
        f"hydra.run.dir=logs/runs/$SLURM_JOB_ID."
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
