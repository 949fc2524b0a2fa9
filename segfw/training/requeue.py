"""SLURM preemption: save at a step boundary, ask for the requeue, stop; the requeued job resumes.

SLURM warns a job with a signal before its time limit (``#SBATCH --signal=SIGUSR1@90``).
Lightning's own handler saves ``hpc_ckpt_<n>.ckpt`` from inside the signal handler, wherever in a
step the signal lands (between the backward pass and the optimizer step, say), and under DDP each
rank where its own signal landed. Here the handler only raises a flag. After each optimizer step
(never in the middle of a gradient accumulation, whose summed gradients no checkpoint holds) the
ranks agree whether any of them was signalled; if so, all save that step's state, rank 0 runs
``scontrol requeue <job id>``, and the run stops before the next step. The requeued job has the
same job id, so the same run dir (``hydra.run.dir=logs/runs/$SLURM_JOB_ID``), and Lightning resumes
from the run dir's newest ``hpc_ckpt_<n>.ckpt``: inside the epoch, the training order going on
after the batches already trained (``SegmentationDataModule.state_dict``).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment

from segfw.errors import SegfwError
from segfw.lightning_compat import epoch_is_ending

log = logging.getLogger(__name__)

HPC_CHECKPOINT = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


class Requeued(SegfwError):
    """The run stopped for a SLURM requeue, its state saved for the requeued job."""


def slurm_plugins() -> list[SLURMEnvironment]:
    """Trainer plugins for a SLURM job: its environment without Lightning's own requeue handler,
    which :class:`Requeue` replaces; none outside SLURM."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeue_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint a SLURM job started with ``ckpt_path=null`` resumes from: the run dir's
    highest-numbered ``hpc_ckpt_<n>.ckpt``, as Lightning chooses it; in a job that SLURM requeued
    on its own, without one, the run's ``checkpoints/last.ckpt``
    (``segfw.training.resume.resolve_ckpt_path``); ``None`` outside SLURM."""
    if not SLURMEnvironment.detect():
        return None
    numbered = _hpc_checkpoints(Path(run_dir))
    if numbered:
        return numbered[max(numbered)]
    last = Path(run_dir) / "checkpoints" / "last.ckpt"
    return last if slurm_restarts() and last.is_file() else None


def slurm_restarts() -> int:
    """How many times SLURM has requeued this job (``SLURM_RESTART_COUNT``); 0 outside SLURM."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _hpc_checkpoints(run_dir: Path) -> dict[int, Path]:
    matches = (HPC_CHECKPOINT.fullmatch(p.name) for p in run_dir.glob("hpc_ckpt_*.ckpt"))
    return {int(m.group(1)): run_dir / m.group(0) for m in matches if m}


class Requeue(pl.Callback):
    """On SLURM, turns the job's end warning into a checkpoint at a step boundary, a requeue and
    a stop (the module docstring says why not Lightning's handler, which :func:`slurm_plugins`
    turns off). Give it first among the callbacks: it stops the run at the start of the step
    after the save, before any other callback logs for that step.

    A warning is acted on after the optimizer step under way (under DDP, after the one following
    it: :meth:`_any_rank_signalled`); one during validation, likewise after the next training
    steps; one during the epoch's last step, after the first step of the next epoch (a checkpoint
    there would resume without that epoch's validation); one after training (while the best
    checkpoint is scored), not at all: the job ends when SLURM ends it. Under DDP the agreement
    costs one all-reduce of one number per optimizer step, which no step waits for.

    Args:
        signum: the warning signal; the same as ``#SBATCH --signal=<signal>@<seconds>``.
    """

    def __init__(self, signum: int = signal.SIGUSR1) -> None:
        self.signum = signum
        self.signalled = False
        self.saved: Path | None = None
        self._previous: Any = None
        self._installed = False
        self._step_at_start = -1
        # Under DDP, the ranks' summed flags of the last optimizer step, and on a GPU the event
        # after which their host copy is readable.
        self._pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # signal.signal works in the main thread only; SLURM starts each task's main thread.
        if SLURMEnvironment.detect() and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._on_signal)
            self._installed = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed:
            # None: the previous handler was not set from Python; the default is the closest.
            previous = signal.SIG_DFL if self._previous is None else self._previous
            signal.signal(self.signum, previous)
            self._installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the step under way finishes first (and no lock is taken in a handler).
        self.signalled = True

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int
    ) -> None:
        # The step after the save: the saved step's metrics have reached the loggers by now, and
        # this step has not begun.
        if self.saved is not None:
            raise Requeued(
                f"Stopped at step {trainer.global_step} for the SLURM requeue (signal "
                f"{signal.Signals(self.signum).name}): the requeued job resumes from {self.saved}."
            )
        self._step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        if not self._installed or self.saved is not None:
            return
        # Only where an optimizer step has just been taken: in the middle of a gradient
        # accumulation the gradients summed so far are in no checkpoint, and the resumed run
        # would end with other weights. Every rank accumulates in step, so all skip together.
        if trainer.global_step == self._step_at_start:
            return
        if not self._any_rank_signalled(trainer):
            return
        training_ends = 0 <= trainer.max_steps <= trainer.global_step
        if epoch_is_ending(trainer) or training_ends:
            return  # the signalled rank keeps its flag: the next step's agreement stops there
        path = _next_hpc_path(Path(trainer.default_root_dir))
        path = trainer.strategy.broadcast(path)  # rank 0's choice, the one it writes
        trainer.save_checkpoint(path)
        self.saved = path
        if trainer.is_global_zero:
            log.info(
                "SLURM end warning: the state after step %d is in %s", trainer.global_step, path
            )
            _ask_for_requeue(path)

    def _any_rank_signalled(self, trainer: pl.Trainer) -> bool:
        """Whether a rank was signalled, as every rank sees it at this optimizer step.

        One process decides on its own flag. Under DDP (SLURM signals each task on its own) the
        ranks all-reduce their flags at every optimizer step, but each reads the result of the
        previous step's all-reduce: on a GPU, reading this step's would wait for the step's
        work to finish, and the next step could not be queued meanwhile. So all ranks stop at
        the same step, one step after the first signalled rank has seen its flag.
        """
        if trainer.world_size == 1:
            return self.signalled
        pending, self._pending = self._pending, None
        decided = False
        if pending is not None:
            flags, copied = pending
            if copied is not None:
                copied.synchronize()  # the previous step's work: done, or nearly, by now
            decided = bool(flags.item())
        device = trainer.strategy.root_device
        # A fill on the device, not a copy of a host value: no wait for the queued work.
        flag = torch.full((), int(self.signalled), dtype=torch.int32, device=device)
        flags = trainer.strategy.reduce(flag, reduce_op="sum")
        if device.type == "cuda":
            # Into pinned host memory behind the step's work, read once the event has passed.
            flags = flags.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (flags, event)
        else:
            self._pending = (flags, None)
        return decided


def _next_hpc_path(run_dir: Path) -> Path:
    """``hpc_ckpt_<n + 1>.ckpt`` after the run dir's highest ``n``, as Lightning numbers them."""
    numbered = _hpc_checkpoints(run_dir)
    return run_dir / f"hpc_ckpt_{max(numbered, default=0) + 1}.ckpt"


def _ask_for_requeue(checkpoint: Path) -> None:
    """``scontrol requeue`` of this job (of this task of a job array)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ.get("SLURM_JOB_ID", "")
    )
    command = ["scontrol", "requeue", job]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    else:
        if result.returncode == 0:
            log.info("requeue of SLURM job %s asked for", job)
            return
        failure = f"exit code {result.returncode}: {result.stderr.strip()}"
    log.error(
        "`%s` failed (%s): submit the job again with the same run dir; it resumes from %s.",
        " ".join(command),
        failure,
        checkpoint,
    )
