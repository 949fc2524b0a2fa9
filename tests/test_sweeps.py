"""Sweeps from the command line with segfw's Optuna sweeper: parallel workers sharing one study,
trials pruned on their per-epoch val/mIoU, failed trials recorded, a crashed sweep continued, the
best result on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from helpers import tiny
from segfw.studies import JOURNAL_FILE, open_storage

ROOT = Path(__file__).resolve().parents[1]
State = optuna.trial.TrialState

# 32 px and 16 training images: a trial takes a few seconds.
SMALL = ["model.height=32", "model.width=32", "data.sizes.train=16", "data.sizes.val=8"]
# The sweep's searched keys, shrunk: a batch size of 0 makes a trial fail, a learning rate of 0.1
# throws the network far off in two steps (the bad trial the pruner stops). The others are fixed.
SPACE = [
    "data.batch_size=choice(0,8)",
    "optimizer.lr=choice(0.0001,0.1)",
    "loss=ce",
    "optimizer.weight_decay=0",
]
GOOD, FAILING, BAD = (
    {"data.batch_size": 8, "optimizer.lr": 0.0001},
    {"data.batch_size": 0, "optimizer.lr": 0.0001},
    {"data.batch_size": 8, "optimizer.lr": 0.1},
)


def _command(sweep_dir: Path, *overrides: str) -> list[str]:
    args = [o for o in tiny(SMALL) if not o.startswith("data.batch_size=")]
    return [sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}", *overrides]


def _env() -> dict[str, str]:
    # One intra-op thread per process: submitit runs two trials at once on the two cores.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _command(sweep_dir, *overrides),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="segfw", storage=open_storage(sweep_dir / JOURNAL_FILE))


def _enqueue(sweep_dir: Path, direction: str, *trials: dict) -> None:
    """Fixes the sweep's first trials' parameters, in order (Optuna asks for queued trials first)."""
    study = optuna.create_study(
        study_name="segfw", storage=open_storage(sweep_dir / JOURNAL_FILE), direction=direction
    )
    for params in trials:
        study.enqueue_trial(params)


def _trial_metrics(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]


@pytest.fixture(scope="module")
def parallel_sweep(tmp_path_factory):
    """4 trials, 2 at a time (two submitit workers sharing the journal): trials 0 and 1 (good,
    failing), then 2 and 3 (bad, good). The median pruner compares trial 2's per-epoch metric with
    trial 0's, from its first epoch on. The metric is val/loss (minimized), not the default
    val/mIoU: on 16 images of 32 px two steps move the mIoU of any network by little and not
    reliably in one direction, while a far too high learning rate raises the loss manyfold (measured:
    10.5 at lr 0.01 against 1.34 untrained); the pruning is the same code for either metric."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    _enqueue(sweep_dir, "minimize", GOOD, FAILING, BAD, GOOD)
    started = time.monotonic()
    result = _sweep(
        sweep_dir,
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "optimized_metric=val/loss",
        "hydra.sweeper.direction=minimize",
        "trainer.max_epochs=2",
        *SPACE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"4 trials, 2 workers: {time.monotonic() - started:.0f} s")
    return sweep_dir


def test_parallel_workers_share_one_study_that_records_pruned_complete_and_failed_trials(
    parallel_sweep,
):
    trials = _study(parallel_sweep).trials
    assert [t.state for t in trials] == [State.COMPLETE, State.FAIL, State.PRUNED, State.COMPLETE]
    assert [t.params for t in trials] == [GOOD, FAILING, BAD, GOOD]
    # The bad trial reported its first epoch's loss, above the good trial's, and stopped there.
    bad, good = trials[2], trials[0]
    assert list(bad.intermediate_values) == [0]
    assert bad.intermediate_values[0] > good.intermediate_values[0]
    assert list(good.intermediate_values) == [0, 1]
    # Two workers: submitit ran each trial as its own job, in a dir named by the trial number.
    assert len(list((parallel_sweep / ".submitit").glob("*/*_log.out"))) == 4
    assert {p.parent.name for p in parallel_sweep.glob("*/metrics.json")} == {"0", "3"}
    assert "Traceback" in (parallel_sweep / "1" / "train.log").read_text()
    assert (
        "trial 2 pruned at epoch 0: val/loss=" in (parallel_sweep / "2" / "train.log").read_text()
    )


def test_best_parameters_value_and_trial_counts_are_written_to_the_sweep_dir(parallel_sweep):
    results = OmegaConf.load(parallel_sweep / "optimization_results.yaml")
    assert results.trials == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1}
    assert results.best_params == GOOD
    best = min(m["val/loss"] for m in _trial_metrics(parallel_sweep))
    assert results.best_value == pytest.approx(best)


# Two sweeps one after another, one killed mid-trial: minutes on two shared cores.
@pytest.mark.slow
def test_a_crashed_sweep_continues_in_its_own_sweep_dir(tmp_path):
    """The sweeping process is killed while trial 1 trains; the same command again marks that
    trial FAIL and adds new trials, numbered on, in new dirs."""
    command = _command(
        tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=3", "trainer.max_epochs=3"
    )
    sweeping = subprocess.Popen(
        command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    while not (tmp_path / "1" / "train.log").is_file():
        assert sweeping.poll() is None and time.monotonic() < deadline, "trial 1 never started"
        time.sleep(0.5)
    sweeping.send_signal(signal.SIGKILL)
    sweeping.wait()
    assert [t.state for t in _study(tmp_path).trials] == [State.COMPLETE, State.RUNNING]

    result = _sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=1")
    assert result.returncode == 0, result.stderr[-3000:]
    states = [t.state for t in _study(tmp_path).trials]
    assert states == [State.COMPLETE, State.FAIL, State.COMPLETE]
    # The sweeper logs through Hydra's own logging, on stdout.
    stale = "trials [1] were left RUNNING by a sweep that stopped: marked FAIL"
    assert stale in result.stdout + result.stderr
    assert (tmp_path / "2" / "metrics.json").is_file()
    # The sampler's seed moved on with the study: the new trial is not trial 0 again.
    trials = _study(tmp_path).trials
    assert trials[2].params != trials[0].params


@pytest.mark.slow
def test_a_sweep_on_a_database_url_shares_the_study_there(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    result = _sweep(
        tmp_path / "sweep",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage={storage}",
        "data.batch_size=8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="segfw", storage=storage)
    assert [t.state for t in study.trials] == [State.COMPLETE]
    assert not (tmp_path / "sweep" / JOURNAL_FILE).exists()


def test_a_misspelled_optimized_metric_ends_the_run(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            *tiny(SMALL),
            "optimized_metric=val/miou",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert "optimized_metric='val/miou' is not a metric this run reports" in result.stderr
    assert "val/mIoU" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before training


def test_a_storage_optuna_cannot_open_ends_the_sweep_in_one_message(tmp_path):
    result = _sweep(tmp_path, "hparams_search=optuna", "hydra.sweeper.storage=redis://host/0")
    assert result.returncode == 1
    assert "hydra.sweeper.storage='redis://host/0': redis:// is not a database" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*/train.log"))  # refused before any trial
