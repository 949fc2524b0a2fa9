"""Helpers for the cluster rehearsals of tests/test_scaling.py: callbacks loaded by every rank of a
``python train.py +callbacks.<name>._target_=cluster_helpers.<Class> ...`` run (tests/ on the
PYTHONPATH), the environment of a SLURM task, and a stand-in ``scontrol``."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytorch_lightning as pl


class SignalAt(pl.Callback):
    """Sends a signal to this process on one rank in the middle of a training step, between its
    backward pass and its optimizer update: where a SLURM warning may land.

    Args:
        step: the global step (optimizer steps done) of the step to signal in.
        rank: the global rank whose process gets the signal; the other ranks get none.
        signum: the signal's name.
    """

    def __init__(self, step: int, rank: int = 0, signum: str = "SIGUSR1") -> None:
        self.step, self.rank, self.signum = step, rank, signal.Signals[signum]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class RankFacts(pl.Callback):
    """Writes what each process ran as into ``<directory>/rank<global rank>.json``: its cluster
    environment, ranks, world size and process id."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        environment = getattr(trainer.strategy, "cluster_environment", None)
        facts = {
            "environment": type(environment).__name__,
            "global_rank": trainer.global_rank,
            "node_rank": trainer.node_rank,
            "world_size": trainer.world_size,
            "pid": os.getpid(),
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))


def free_port() -> int:
    """A TCP port nobody listens on now, for a rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slurm_task_env(job_id: int, rank: int, tasks: int, port: int, restarts: int = 0) -> dict:
    """The variables SLURM gives task ``rank`` of a one-node job of ``tasks`` tasks
    (``sbatch --nodes=1 --ntasks-per-node=<tasks>``, ``srun``), as Lightning reads them: not named
    ``bash`` or ``interactive`` (Lightning would then not take it for a batch job). SLURM sets no
    MASTER_ADDR: Lightning takes the first host of ``SLURM_NODELIST``; MASTER_PORT is set here
    (Lightning's default, 15000 + the job id's last 4 digits, may be taken on a shared machine)."""
    env = {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NAME": "segfw-train",
        "SLURM_NTASKS": str(tasks),
        "SLURM_NTASKS_PER_NODE": str(tasks),
        "SLURM_NNODES": "1",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank),
        "SLURM_NODEID": "0",
        "MASTER_PORT": str(port),
    }
    if restarts:
        env["SLURM_RESTART_COUNT"] = str(restarts)
    return env


def fake_scontrol(directory: Path, record: Path) -> Path:
    """Writes ``<directory>/scontrol``, which appends its arguments as one line to ``record``;
    returns ``directory``, to put first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{record}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def rank_callbacks(run_dir: Path) -> list[str]:
    """Overrides adding the callbacks that record each rank's weights (``run_dir/ranks``) and the
    facts it saw (``run_dir/facts``)."""
    return [
        "+callbacks.rank_weights._target_=ddp_helpers.SaveRankWeights",
        f"+callbacks.rank_weights.directory={run_dir / 'ranks'}",
        "+callbacks.facts._target_=cluster_helpers.RankFacts",
        f"+callbacks.facts.directory={run_dir / 'facts'}",
    ]
