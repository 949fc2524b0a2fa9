"""Sweeps from the command line: Optuna (failed trials, a persistent study that a second run
continues, the best result on disk) and the submitit launcher on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from helpers import tiny

ROOT = Path(__file__).resolve().parents[1]

# 32 px and 16 training images: a trial takes a few seconds.
SMALL = ["model.height=32", "model.width=32", "data.sizes.train=16", "data.sizes.val=8"]
# Searched: lr, weight decay and loss from segfw/conf/hparams_search/optuna.yaml; backbone fixed by
# tiny(); a batch size of 0 makes a trial fail.
FAILING_BATCH_SIZE = "data.batch_size=choice(0,8)"


def _sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [o for o in tiny(SMALL) if not o.startswith("data.batch_size=")]
    command = [sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}", *overrides]
    # One intra-op thread per process: submitit runs two trials at once on the two cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _study(sweep_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name="segfw", storage=f"sqlite:///{sweep_dir}/optuna.db")


def _trial_metrics(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    result = _sweep(
        sweep_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=3", FAILING_BATCH_SIZE
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_failed_trials_are_recorded_and_the_sweep_goes_on(optuna_sweep):
    trials = _study(optuna_sweep).trials[:3]  # a later test continues the study
    states = {t.params["data.batch_size"]: t.state for t in trials}
    # The seeded sampler draws both batch sizes in three trials.
    assert states == {0: optuna.trial.TrialState.FAIL, 8: optuna.trial.TrialState.COMPLETE}
    failed = next(
        p for p in optuna_sweep.iterdir() if p.is_dir() and not (p / "metrics.json").exists()
    )
    # The failed trial's own log keeps its traceback.
    assert "Traceback" in (failed / "train.log").read_text()


def test_best_parameters_and_value_are_written_to_the_sweep_dir(optuna_sweep):
    results = OmegaConf.load(optuna_sweep / "optimization_results.yaml")
    assert set(results.best_params) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "loss",
        "data.batch_size",
    }
    assert results.best_params["data.batch_size"] == 8
    best = max(m["val/mIoU"] for m in _trial_metrics(optuna_sweep))
    assert results.best_value == pytest.approx(best)


def test_a_second_run_continues_the_study_with_new_trials(optuna_sweep, tmp_path):
    before = [t.params for t in _study(optuna_sweep).trials]
    first_trials = {p: (p / "train.log").read_text() for p in optuna_sweep.glob("[0-9]*")}

    storage = f"hydra.sweeper.storage=sqlite:///{optuna_sweep}/optuna.db"
    overrides = ("hparams_search=optuna", "hydra.sweeper.n_trials=1", FAILING_BATCH_SIZE, storage)
    result = _sweep(tmp_path, *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = _study(optuna_sweep).trials
    assert len(trials) == 4
    # The sampler's seed moved on with the study, so the start-up trial is not trial 0 again.
    assert trials[3].params not in before
    # The new trial ran in the new sweep dir, whose results cover the whole study.
    assert (tmp_path / "0" / "train.log").is_file() and not (tmp_path / "optuna.db").exists()
    assert {p: (p / "train.log").read_text() for p in optuna_sweep.glob("[0-9]*")} == first_trials
    results = OmegaConf.load(tmp_path / "optimization_results.yaml")
    best = max(m["val/mIoU"] for d in (optuna_sweep, tmp_path) for m in _trial_metrics(d))
    assert results.best_value == pytest.approx(best)


def test_continuing_a_study_in_its_own_sweep_dir_is_refused(optuna_sweep):
    trials = len(_study(optuna_sweep).trials)
    first_trial_log = (optuna_sweep / "0" / "train.log").read_text()
    result = _sweep(
        optuna_sweep, "hparams_search=optuna", "hydra.sweeper.n_trials=1", FAILING_BATCH_SIZE
    )
    assert result.returncode == 1
    assert "would overwrite their dirs" in result.stderr
    assert f"hydra.sweeper.storage=sqlite:///{optuna_sweep}/optuna.db" in result.stderr
    assert len(_study(optuna_sweep).trials) == trials
    assert (optuna_sweep / "0" / "train.log").read_text() == first_trial_log


# A cluster launcher: with tests/test_scaling.py's SLURM rehearsals, under -m slow.
@pytest.mark.slow
def test_submitit_local_launcher_runs_trials_as_jobs(tmp_path):
    result = _sweep(
        tmp_path,
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "data.batch_size=8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_trial_metrics(tmp_path)) == 2
    assert len(list((tmp_path / ".submitit").glob("*/*_log.out"))) == 2
    assert (tmp_path / "optimization_results.yaml").is_file()


def test_a_misspelled_optimized_metric_ends_the_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            *tiny(SMALL),
            "optimized_metric=val/miou",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    assert "optimized_metric='val/miou' is not a metric this run reports" in result.stderr
    assert "val/mIoU" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before training
