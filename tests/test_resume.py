"""Resume: a run interrupted mid-training and resumed with ckpt_path=last ends with the same weights
as a run that was never interrupted; ckpt_path=last with nothing to resume is refused."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from cluster_helpers import fake_scontrol, free_port, slurm_task_env
from omegaconf import OmegaConf

from helpers import compose_config, tiny
from segfw.commands import train as tasks
from segfw.errors import ConfigError
from segfw.training.requeue import Requeued, requeue_checkpoint
from segfw.training.resume import RandomState

# Two epochs of four steps at 32 px; DeepLabv3+'s dropout makes the weights depend on the random
# state of the training process, flips and a random rescale on each sample's own seed.
RESUMABLE = [
    "model=deeplabv3plus",
    "model.height=32",
    "model.width=32",
    "data.sizes.train=16",
    "data.sizes.val=8",
    "data.sizes.test=8",
    "data.batch_size=4",
    "trainer.max_epochs=2",
    "data.augment.hflip=true",
    "data.augment.scale=[0.8,1.2]",
    "scheduler.warmup_steps=2",
]
# Inside the second epoch, after last.ckpt of the first was written.
INTERRUPT_AT_STEP = 6


class Interrupted(RuntimeError):
    """The stand-in for a killed process."""


class InterruptAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Interrupted(f"interrupted at step {self.step}")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Five short runs in this process: one intra-op thread keeps them quick on two shared cores
    (measured 6 s a run, against 40 s with two threads while other processes were busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(output_dir: Path, *overrides: str):
    cfg = compose_config("train", tiny([*RESUMABLE, *overrides]), output_dir)
    OmegaConf.resolve(cfg)
    return cfg


def _final_state(output_dir: Path) -> dict:
    return torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    tasks.train(_config(output_dir))
    return output_dir


def _train_until(
    stop: type[BaseException], callback: pl.Callback, output_dir: Path, *overrides: str
) -> BaseException:
    """Trains in ``output_dir`` with ``callback`` added to the trainer, which must end the run
    with ``stop``; the exception."""
    build_trainer = tasks.build_trainer

    def trainer_with_callback(cfg):
        trainer = build_trainer(cfg)
        trainer.callbacks.append(callback)
        return trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks, "build_trainer", trainer_with_callback)
        with pytest.raises(stop) as stopped:
            tasks.train(_config(output_dir, *overrides))
    return stopped.value


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The run dir of a run stopped in its second epoch; tests resume copies of it."""
    output_dir = tmp_path_factory.mktemp("interrupted")
    _train_until(Interrupted, InterruptAt(INTERRUPT_AT_STEP), output_dir)
    assert _final_state(output_dir)["global_step"] == 4  # the end of the first epoch
    return output_dir


def _validation_rows(output_dir: Path) -> list[tuple[str, str]]:
    with open(output_dir / "csv" / "metrics.csv", newline="") as file:
        return [(row["epoch"], row["step"]) for row in csv.DictReader(file) if row["val/mIoU"]]


def test_interrupted_and_resumed_run_ends_with_the_same_weights(
    uninterrupted, interrupted, tmp_path
):
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    tasks.train(_config(run_dir, "ckpt_path=last"))
    resumed = _final_state(run_dir)
    uninterrupted_dir, uninterrupted = uninterrupted, _final_state(uninterrupted)

    assert resumed["global_step"] == uninterrupted["global_step"] == 8
    assert resumed["epoch"] == uninterrupted["epoch"]
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, weight in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    resumed_lr = resumed["lr_schedulers"][0]["_last_lr"]
    assert resumed_lr == uninterrupted["lr_schedulers"][0]["_last_lr"]

    # The CSV log keeps the epoch before the interruption and goes on with the resumed ones.
    assert _validation_rows(run_dir) == _validation_rows(uninterrupted_dir)
    assert len(_validation_rows(run_dir)) >= 2


def test_without_the_random_state_the_resumed_weights_differ(
    uninterrupted, interrupted, tmp_path, monkeypatch
):
    # The check above is only worth something if the random state matters to the weights.
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    monkeypatch.setattr(RandomState, "load_state_dict", lambda self, state: None)
    tasks.train(_config(run_dir, "ckpt_path=last"))
    resumed = _final_state(run_dir)["state_dict"]
    weights = _final_state(uninterrupted)["state_dict"]
    assert any(not torch.equal(resumed[k], w) for k, w in weights.items())


def test_resuming_a_run_dir_without_last_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no .*last\.ckpt.*hydra\.run\.dir=<its run dir>"):
        tasks.train(_config(tmp_path / "fresh", "ckpt_path=last"))
    assert not (tmp_path / "fresh" / "checkpoints").exists()


def test_requeued_slurm_job_without_its_requeue_checkpoint_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(ConfigError, match=r"requeued.*hydra\.run\.dir=logs/runs/\$SLURM_JOB_ID"):
        tasks.train(_config(tmp_path))


# --- SLURM requeue, one task: saved after an optimizer step, resumed to the same weights ----------

# Four batches an epoch, two per optimizer step: two steps an epoch, four in all.
ACCUMULATING = ["trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=10"]


class SignalAfterBackward(pl.Callback):
    """Sends SIGUSR1 to this process after the backward pass of one batch (counted over the fit),
    where a SLURM warning may land: in the middle of an accumulation, or before its step."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.fit_loop.total_batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)


@pytest.fixture
def slurm_task(tmp_path, monkeypatch):
    """This process as the only task of SLURM job 4242, with a stand-in scontrol."""
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in slurm_task_env(4242, 0, 1, free_port()).items():
        monkeypatch.setenv(name, value)
    bin_dir = fake_scontrol(tmp_path / "bin", tmp_path / "scontrol.log")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return monkeypatch


def _warned_run(run_dir: Path, batch: int, *overrides: str) -> str:
    """Trains in ``run_dir`` until SIGUSR1, sent after ``batch``'s backward pass, stops it; the
    stop message."""
    return str(_train_until(Requeued, SignalAfterBackward(batch), run_dir, *overrides))


@pytest.fixture(scope="module")
def uninterrupted_accumulating(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted_accumulating")
    tasks.train(_config(output_dir, *ACCUMULATING))
    return _final_state(output_dir)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("batch", "saved_step"),
    [(4, 3), (5, 3)],  # batch 4 begins the second epoch's first accumulation, batch 5 ends it
    ids=["mid_accumulation", "at_the_optimizer_step"],
)
def test_requeue_with_gradient_accumulation_resumes_to_the_uninterrupted_weights(
    uninterrupted_accumulating, slurm_task, tmp_path, batch, saved_step
):
    run_dir = tmp_path / "run"
    message = _warned_run(run_dir, batch, *ACCUMULATING)
    # Before: a warning after batch 4 saved there, its gradient lost (max |delta| 2.6 at the end).
    assert f"Stopped at step {saved_step} for the SLURM requeue" in message
    (saved,) = run_dir.glob("hpc_ckpt_*.ckpt")
    assert torch.load(saved, map_location="cpu")["global_step"] == saved_step

    slurm_task.setenv("SLURM_RESTART_COUNT", "1")
    tasks.train(_config(run_dir, *ACCUMULATING))
    resumed, expected = _final_state(run_dir), uninterrupted_accumulating
    assert resumed["global_step"] == expected["global_step"] == 4
    for name, weight in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name


def test_requeue_saves_after_the_optimizer_step_the_warning_lands_in(slurm_task, tmp_path):
    # Before: only at steps that are multiples of trainer.log_every_n_steps (10 here), so a run
    # of four steps never stopped for the requeue.
    run_dir = tmp_path / "run"
    message = _warned_run(run_dir, 1, "trainer.log_every_n_steps=10", "trainer.max_epochs=1")
    assert "Stopped at step 2 for the SLURM requeue (signal SIGUSR1)" in message
    (saved,) = run_dir.glob("hpc_ckpt_*.ckpt")
    assert torch.load(saved, map_location="cpu")["global_step"] == 2
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]


def test_job_requeued_by_slurm_with_only_last_checkpoint_resumes_from_it(
    uninterrupted, interrupted, slurm_task, tmp_path
):
    # SLURM requeued the job on its own (a node failure): no hpc_ckpt_*.ckpt, an epoch's last.ckpt.
    # Before: ConfigError "... holds no hpc_ckpt_*.ckpt to resume from. Give the job a run dir ...".
    run_dir = shutil.copytree(interrupted, tmp_path / "run")
    slurm_task.setenv("SLURM_RESTART_COUNT", "1")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert requeue_checkpoint(run_dir) == last  # the wandb run goes on too
    tasks.train(_config(run_dir))
    resumed, expected = _final_state(run_dir), _final_state(uninterrupted)
    assert resumed["global_step"] == expected["global_step"] == 8
    for name, weight in expected["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name


# --- killed with SIGKILL, the default loader (workers, persistent), every default callback ---------

# Three epochs of four steps at 32 px, through train.py with the default callbacks and loggers and
# the default loader: data.num_workers=auto (one worker on two cores) with persistent workers.
KILLABLE = [
    "experiment=quickstart",
    "model.height=32",
    "model.width=32",
    "data.sizes.train=16",
    "data.sizes.val=6",
    "data.sizes.test=5",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.num_workers=auto",
    "data.augment.scale=[0.8,1.2]",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=2",
    "scheduler.warmup_steps=2",
    "callbacks.validation_samples.num_samples=2",
    "worst_cases=2",
]
KILLS = {
    "mid_epoch": ("train_batch", 6),  # inside epoch 2
    "mid_validation": ("validation_batch", 8),  # validating epoch 2
    "mid_checkpoint": ("checkpoint", 8),  # writing epoch 2's checkpoints
}


def run_train(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "train.py", *KILLABLE, f"hydra.run.dir={run_dir}", *overrides],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted_cli(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "uninterrupted"
    result = run_train(run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def kill_and_resume(run_dir: Path, point: str, step: int) -> dict:
    killed = run_train(
        run_dir,
        "+callbacks.killer._target_=killers.KillAt",
        f"+callbacks.killer.point={point}",
        f"+callbacks.killer.step={step}",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run_train(run_dir, "ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return _final_state(run_dir)


def assert_same_weights(run_dir: Path, reference_dir: Path) -> None:
    resumed, reference = _final_state(run_dir), _final_state(reference_dir)
    assert resumed["global_step"] == reference["global_step"] == 12
    for name, weight in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    # The resumed run's scores are the uninterrupted run's.
    scores = json.loads((run_dir / "metrics.json").read_text())
    expected = json.loads((reference_dir / "metrics.json").read_text())
    assert scores["val/mIoU"] == expected["val/mIoU"]


def test_a_run_killed_mid_epoch_with_loader_workers_resumes_to_the_same_weights(
    uninterrupted_cli, tmp_path
):
    kill_and_resume(tmp_path / "run", *KILLS["mid_epoch"])
    assert_same_weights(tmp_path / "run", uninterrupted_cli)


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid_validation", "mid_checkpoint"])
def test_a_run_killed_anywhere_resumes_to_the_same_weights(uninterrupted_cli, tmp_path, when):
    kill_and_resume(tmp_path / "run", *KILLS[when])
    if when == "mid_checkpoint":  # the interrupted write left its temporary file, nothing else
        assert list((tmp_path / "run" / "checkpoints").glob(".partial-checkpoint-*"))
    assert_same_weights(tmp_path / "run", uninterrupted_cli)
