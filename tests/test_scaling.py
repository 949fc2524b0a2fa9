"""Scale-out rehearsed on one machine (docs/scaling.md): two nodes over localhost, a SLURM job
warned, requeued and resumed, an Optuna sweep on the submitit launcher; the resumable training
order the requeue relies on; and the GPU check's CPU smoke run, so that it does not rot.

The rehearsals start real processes with real launchers (torchrun, a SLURM task's environment,
submitit); what they cannot show is a real cluster's network, scheduler and shared filesystem."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import torch
from cluster_helpers import fake_scontrol, free_port, rank_callbacks, slurm_task_env
from omegaconf import OmegaConf
from test_logging import _history, _parse_wandb_file

from helpers import assert_matches_single_process_evaluation, compose_config, tiny
from segfw.commands.config import build_datamodule
from segfw.data.samplers import TrainingSampler
from segfw.studies import JOURNAL_FILE, open_storage

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _env(**extra: str) -> dict[str, str]:
    # One intra-op thread per process: two processes share the two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS), **extra}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name, weight in a.items():
        assert torch.equal(weight, b[name]), name


# --- the training order resumed inside an epoch ---------------------------------------------------


def test_a_sampler_pass_told_to_skip_is_the_rest_of_that_epoch():
    sampler = TrainingSampler(11, seed=3, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.skip(2, 4)
    assert list(sampler) == whole[4:]
    assert list(sampler) == whole  # one pass only
    sampler.skip(1, 4)  # another epoch's place: this pass is whole
    assert list(sampler) == whole


class _Stop(Exception):
    """The stand-in for a job that ended after saving."""


class _SaveAndStop(pl.Callback):
    """Saves a checkpoint at one point of training, then stops it."""

    def __init__(self, path: Path, hook: str, step: int) -> None:
        self.path, self.hook, self.step = path, hook, step

    def _maybe(self, trainer: pl.Trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise _Stop

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._maybe(trainer, "train_batch_end")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._maybe(trainer, "train_epoch_end")


class _Batches(pl.LightningModule):
    """Records the samples of each training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Conv2d(3, 1, 1)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return self.layer(batch["image"].float()).mean()

    def configure_optimizers(self):
        # As SegmentationModule's schedule does: Lightning then builds the training loader (and
        # starts its workers) before it restores a checkpoint's loop state.
        assert self.trainer.estimated_stepping_batches == 8
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, workers: int, callbacks=(), ckpt_path=None) -> list[list[int]]:
    cfg = compose_config(
        "train",
        tiny(["model.height=32", "model.width=32", "data.sizes.train=16", "data.batch_size=4"]),
    )
    datamodule = build_datamodule(cfg.data, cfg.model, seed=7, num_workers=workers)
    module = _Batches()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )
    with contextlib.suppress(_Stop):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module.seen


@pytest.mark.parametrize(
    ("hook", "step", "workers"),
    [
        ("train_batch_end", 6, 0),  # inside the second epoch, two of its four batches trained
        ("train_batch_end", 6, 1),  # the same, with a worker that fetches ahead
        ("train_epoch_end", 4, 1),  # at the end of the first epoch
    ],
)
def test_a_run_resumed_from_a_checkpoint_sees_the_rest_of_the_batches(
    tmp_path, hook, step, workers
):
    """The datamodule saves the training loop's count of batches trained in the epoch (not the
    loader's, which runs ahead); the resumed run's batches are the uninterrupted run's rest."""
    uninterrupted = _fit(tmp_path / "whole", workers)
    checkpoint = tmp_path / "stopped.ckpt"
    before = _fit(tmp_path / "run", workers, [_SaveAndStop(checkpoint, hook, step)])
    after = _fit(tmp_path / "run", workers, ckpt_path=checkpoint)
    assert len(uninterrupted) == 8 and len(before) == step
    assert before + after == uninterrupted


# --- the GPU check, reduced to run here --------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return gpu_check


def test_gpu_check_cpu_smoke_runs_every_part(gpu_check, tmp_path, capsys):
    gpu_check.main(["--cpu-smoke", "--json", str(tmp_path / "check.json")])
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["mode"] == "cpu-smoke" and not report["skipped"]
    (row,) = report["train"]
    assert row["setting"] == "32-true channels_last"
    for side in ("hand", "segfw"):
        assert row[side]["step_ms"] > 0 and row[side]["peak_mib"] > 0, row
    assert report["eval"]["bare_eval"]["images_per_s"] > 0
    assert report["eval"]["segfw_eval"]["images_per_s"] > 0
    assert [r["network"].split(" (")[0].split(",")[0] for r in report["throughput"]] == [
        "quickstart",
        "DeepLabv3+",
    ]
    assert all(
        "error" not in r[v] for r in report["throughput"] for v in ("segfw_train", "segfw_eval")
    )
    # On a CPU, trainer.deterministic=true promises equal weights: the check must find them.
    (determinism,) = report["determinism"]
    assert determinism["result"] == "equal", determinism
    out = capsys.readouterr().out
    assert "CPU SMOKE RUN" in out and "| setting | hand-written (ms) |" in out


def test_gpu_check_table_shows_failures_refusals_and_skipped_parts(gpu_check, monkeypatch):
    # What only a GPU produces: an out-of-memory variant, a refused and an unequal determinism
    # pair, a part left out for time.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "a GPU")
    report = gpu_check.Report(gpu_check.gpu_plan(budget_s=420))
    report.train = [
        {
            "setting": "16-mixed",
            "hand": {"step_ms": 10.0, "peak_mib": 100.0},
            "segfw": {"error": "CUDA out of memory."},
        }
    ]
    refusal = "upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation"
    report.determinism = [
        {"model": "deeplabv3plus", "backbone": "resnet50", "result": "refused", "message": refusal},
        {
            "model": "unet",
            "backbone": "mobilenetv2",
            "result": "differ",
            "tensors_differing": 3,
            "tensors": 374,
            "max_abs_difference": 1e-7,
        },
    ]
    report.skipped = ["train bf16-mixed channels_last compile"]
    text = gpu_check.table(report)
    assert "| 16-mixed | 10.0 | failed: CUDA out of memory. |  |  |" in text
    assert f"| deeplabv3plus (resnet50) | refused: {refusal} |" in text
    assert "| unet (mobilenetv2) | differ: 3 of 374 tensors differ, at most by 1e-07 |" in text
    assert "Skipped (time budget): train bf16-mixed channels_last compile" in text


# --- two nodes over localhost ------------------------------------------------------------------------

# One node each, one process per node: 32 training images, 8 per batch and process, two epochs.
TWO_NODES = [
    "trainer=ddp",
    "trainer.num_nodes=2",
    "trainer.devices=1",
    "trainer.accelerator=cpu",
    "trainer.sync_batchnorm=false",  # torch's SyncBatchNorm has no CPU kernel
    "trainer.max_epochs=2",
    "data.sizes.val=15",  # not a multiple of the two processes
    "data.sizes.test=13",
]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Two torchrun launches, node ranks 0 and 1, meeting at 127.0.0.1: what two machines run."""
    run_dir = tmp_path_factory.mktemp("two_nodes")
    port = free_port()
    overrides = [
        *tiny(TWO_NODES),
        f"hydra.run.dir={run_dir}",
        *rank_callbacks(run_dir),
    ]
    nodes = []
    started = time.monotonic()
    for node in (0, 1):
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            f"--node_rank={node}",
            "--nproc-per-node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
        ]
        nodes.append(
            subprocess.Popen(
                [*launcher, "train.py", *overrides],
                cwd=ROOT,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=900)[0] for node in nodes]
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    print(f"two nodes over localhost: {time.monotonic() - started:.0f} s")
    return run_dir


def _facts(run_dir: Path) -> list[dict]:
    return [json.loads((run_dir / "facts" / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_two_nodes_train_as_one_run_with_identical_weights(two_nodes):
    facts = _facts(two_nodes)
    assert [(f["global_rank"], f["node_rank"], f["world_size"]) for f in facts] == [
        (0, 0, 2),
        (1, 1, 2),
    ]
    assert {f["environment"] for f in facts} == {"TorchElasticEnvironment"}
    _assert_same_weights(
        torch.load(two_nodes / "ranks" / "rank0.pt"), torch.load(two_nodes / "ranks" / "rank1.pt")
    )
    # 32 images over 2 processes, 8 per batch: 2 steps an epoch.
    assert _weights(two_nodes / "checkpoints" / "last.ckpt")["global_step"] == 4


@pytest.mark.slow
def test_two_nodes_write_the_runs_files_from_rank_0_only(two_nodes):
    rank0_pid = _facts(two_nodes)[0]["pid"]
    # TensorBoard names each event file after its writer: events.out.tfevents.<time>.<host>.<pid>.<n>
    writers = {int(p.name.split(".")[-2]) for p in (two_nodes / "tensorboard").glob("events.*")}
    assert writers == {rank0_pid}
    assert sorted(p.name for p in (two_nodes / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((two_nodes / "checkpoints").iterdir())) == 2
    with open(two_nodes / "csv" / "metrics.csv", newline="") as file:
        steps = [row["step"] for row in csv.DictReader(file) if row["train/loss"]]
    assert steps == ["0", "1", "2", "3"]  # each step logged once
    with open(two_nodes / "per_image.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for split, size in (("val", 15), ("test", 13)):
        assert sorted(int(r["index"]) for r in rows if r["split"] == split) == list(range(size))


@pytest.mark.slow
def test_two_nodes_metrics_equal_a_single_process_evaluation(two_nodes, tmp_path):
    assert_matches_single_process_evaluation(two_nodes, tmp_path)


# --- SLURM: warned, requeued, resumed ----------------------------------------------------------------

JOB_ID = 4242
# Two tasks on one node (sbatch --ntasks-per-node=2), two epochs of four steps each: 32 images,
# 4 per batch and process.
SLURM_RUN = [
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "trainer.sync_batchnorm=false",
    "model.height=32",
    "model.width=32",
    "data.batch_size=4",
    "data.sizes.val=15",
    "data.sizes.test=7",
    "trainer.max_epochs=2",
    "logger=[csv,tensorboard,wandb]",
]
# The warning lands on rank 0 only, in the middle of the second epoch's second step (after its
# backward pass, before its update). Under DDP the ranks read their agreement one optimizer step
# late (segfw.training.requeue.Requeue._any_rank_signalled): both stop after the next step, 7.
SIGNAL_AT_STEP = 5
STOPPED_AT_STEP = SIGNAL_AT_STEP + 2


def _slurm_job(run_dir: Path, scratch: Path, *extra: str, restarts: int = 0) -> list[str]:
    """The two tasks of SLURM job JOB_ID running train.py, as srun starts them; their output."""
    bin_dir = fake_scontrol(scratch / "bin", scratch / "scontrol.log")
    wandb_home = scratch / "wandb_home"
    port = free_port()
    overrides = [
        *tiny(SLURM_RUN),
        f"hydra.run.dir={run_dir}",
        *rank_callbacks(run_dir),
        *extra,
    ]
    wandb_dirs = ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
    tasks = []
    for rank in (0, 1):
        env = _env(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            WANDB_MODE="offline",
            **{name: str(wandb_home / name.lower()) for name in wandb_dirs},
        )
        # Only this job's variables, even where the tests themselves run in a SLURM job.
        env = {k: v for k, v in env.items() if not k.startswith("SLURM_") and k != "WANDB_API_KEY"}
        env |= slurm_task_env(JOB_ID, rank, 2, port, restarts)
        tasks.append(
            subprocess.Popen(
                [sys.executable, "train.py", *overrides],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [task.communicate(timeout=900)[0] for task in tasks]
    return [f"exit {task.returncode}\n{out}" for task, out in zip(tasks, outputs, strict=True)]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """An uninterrupted job, and a job warned at SIGNAL_AT_STEP, then requeued into its run dir."""
    base = tmp_path_factory.mktemp("slurm")
    started = time.monotonic()
    uninterrupted = _slurm_job(base / "uninterrupted", base / "scratch_u")
    assert all(out.startswith("exit 0\n") for out in uninterrupted), uninterrupted[0][-3000:]
    run_dir = base / "run"
    warned = _slurm_job(
        run_dir,
        base / "scratch",
        "+callbacks.warning._target_=cluster_helpers.SignalAt",
        f"+callbacks.warning.step={SIGNAL_AT_STEP}",
    )
    stopped = {p.name: _weights(p)["global_step"] for p in run_dir.glob("hpc_ckpt_*.ckpt")}
    wandb_id = (run_dir / "wandb_id").read_text().strip()
    requeued = _slurm_job(run_dir, base / "scratch", restarts=1)
    print(f"SLURM rehearsal, three jobs of two tasks: {time.monotonic() - started:.0f} s")
    return {
        "uninterrupted": base / "uninterrupted",
        "run": run_dir,
        "warned": warned,
        "requeued": requeued,
        "stopped": stopped,
        "wandb_id": wandb_id,
        "scontrol": (base / "scratch" / "scontrol.log").read_text().splitlines(),
    }


@pytest.mark.slow
def test_slurm_tasks_are_seen_as_a_slurm_job_of_two_ranks(slurm):
    facts = _facts(slurm["run"])
    assert {f["environment"] for f in facts} == {"SLURMEnvironment"}
    assert [(f["global_rank"], f["world_size"]) for f in facts] == [(0, 2), (1, 2)]


@pytest.mark.slow
def test_slurm_warning_saves_at_a_step_boundary_requeues_once_and_stops_every_rank(slurm):
    for output in slurm["warned"]:
        assert output.startswith("exit 1\n"), output[-3000:]
        assert f"Stopped at step {STOPPED_AT_STEP} for the SLURM requeue (signal SIGUSR1)" in output
    # Rank 1 was never signalled, yet stopped with rank 0 after the same step.
    assert slurm["stopped"] == {"hpc_ckpt_1.ckpt": STOPPED_AT_STEP}
    assert slurm["scontrol"] == [f"requeue {JOB_ID}"]  # rank 0 alone asks


@pytest.mark.slow
def test_requeued_slurm_job_ends_with_the_uninterrupted_weights(slurm):
    for output in slurm["requeued"]:
        assert output.startswith("exit 0\n"), output[-3000:]
    assert "hpc_ckpt_1.ckpt" in slurm["requeued"][0]  # Lightning resumed from it
    uninterrupted = _weights(slurm["uninterrupted"] / "checkpoints" / "last.ckpt")
    resumed = _weights(slurm["run"] / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == uninterrupted["global_step"] == 8
    _assert_same_weights(resumed["state_dict"], uninterrupted["state_dict"])
    ranks = slurm["run"] / "ranks"
    _assert_same_weights(torch.load(ranks / "rank0.pt"), torch.load(ranks / "rank1.pt"))
    # The best checkpoint is scored, not the requeue checkpoint Lightning would otherwise load.
    scores = json.loads((slurm["run"] / "metrics.json").read_text())
    expected = json.loads((slurm["uninterrupted"] / "metrics.json").read_text())
    assert {k: v for k, v in scores.items() if k != "best_checkpoint"} == {
        k: v for k, v in expected.items() if k != "best_checkpoint"
    }


@pytest.mark.slow
def test_requeued_slurm_job_appends_to_the_same_csv(slurm):
    # Every row once, as the uninterrupted job wrote them: the warned job's rows up to step 7,
    # the requeued job's after it.
    def rows(run_dir: Path) -> list[dict]:
        with open(run_dir / "csv" / "metrics.csv", newline="") as file:
            return list(csv.DictReader(file))

    assert rows(slurm["run"]) == rows(slurm["uninterrupted"])


@pytest.mark.slow
def test_requeued_slurm_job_continues_the_same_wandb_run(slurm):
    run_id = slurm["wandb_id"]
    assert (slurm["run"] / "wandb_id").read_text().strip() == run_id
    assert f"wandb: continuing run {run_id}" in slurm["requeued"][0]
    parts = sorted((slurm["run"] / "wandb").glob("offline-run-*"))
    assert [p.name.rsplit("-", 1)[1] for p in parts] == [run_id, run_id]  # offline: one dir a part

    def losses(offline: Path) -> list[tuple[int, float]]:
        (path,) = offline.glob("run-*.wandb")
        history = _history(_parse_wandb_file(path.read_bytes()))
        return [(r["trainer/global_step"], r["train/loss"]) for r in history if "train/loss" in r]

    first, second = (losses(p) for p in parts)
    (uninterrupted,) = (slurm["uninterrupted"] / "wandb").glob("offline-run-*")
    assert [s for s, _ in first] == list(range(STOPPED_AT_STEP))
    assert first + second == losses(uninterrupted)


# --- an Optuna sweep on the submitit launcher ---------------------------------------------------------


@pytest.fixture(scope="module")
def submitit_sweep(tmp_path_factory):
    """Four trials, two at a time, as submitit jobs; a batch size of 0 makes a trial fail."""
    sweep_dir = tmp_path_factory.mktemp("submitit_sweep")
    small = ["model.height=32", "model.width=32", "data.sizes.train=16", "data.sizes.val=8"]
    args = [o for o in tiny(small) if not o.startswith("data.batch_size=")]
    command = [
        sys.executable,
        "train.py",
        "-m",
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "data.batch_size=choice(0,8)",
        *args,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    started = time.monotonic()
    result = subprocess.run(
        command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"submitit_local sweep, 4 trials: {time.monotonic() - started:.0f} s")
    return sweep_dir


def _job_span(log: Path) -> tuple[float, float]:
    """When a submitit job started and ended, from its log's ``submitit INFO (<time>)`` lines."""
    stamps = re.findall(r"^submitit INFO \((\S+ \S+)\)", log.read_text(), re.MULTILINE)
    seconds = [datetime.strptime(s, "%Y-%m-%d %H:%M:%S,%f").timestamp() for s in stamps]
    return min(seconds), max(seconds)


@pytest.mark.slow
def test_submitit_sweep_records_every_trial_and_a_failed_one_does_not_stop_it(submitit_sweep):
    study = optuna.load_study(
        study_name="segfw", storage=open_storage(submitit_sweep / JOURNAL_FILE)
    )
    states = [(t.params["data.batch_size"], t.state) for t in study.trials]
    assert len(states) == 4
    assert {s for b, s in states if b == 0} == {optuna.trial.TrialState.FAIL}
    assert {s for b, s in states if b == 8} == {optuna.trial.TrialState.COMPLETE}
    assert {b for b, _ in states} == {0, 8}  # the seeded sampler draws both
    assert (submitit_sweep / "optimization_results.yaml").is_file()
    best = OmegaConf.load(submitit_sweep / "optimization_results.yaml").best_params
    assert best["data.batch_size"] == 8


@pytest.mark.slow
def test_submitit_sweep_runs_two_trials_at_a_time_each_in_its_own_job_and_dir(submitit_sweep):
    trials = sorted(p.name for p in submitit_sweep.iterdir() if p.name.isdigit())
    assert trials == ["0", "1", "2", "3"]
    for trial in trials:
        assert (submitit_sweep / trial / "train.log").is_file()
        assert (submitit_sweep / trial / ".hydra" / "overrides.yaml").is_file()
    # One submitit job (a process of its own, its id the process id locally) per trial; the
    # first two ran together, then the last two together.
    jobs = sorted(_job_span(log) for log in (submitit_sweep / ".submitit").glob("*/*_log.out"))
    assert len(jobs) == 4
    (start_a, end_a), (start_b, end_b), (start_c, end_c), (start_d, end_d) = jobs
    assert start_b < end_a and start_d < end_c
    assert min(start_c, start_d) > max(end_a, end_b)
