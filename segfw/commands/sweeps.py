"""Optuna sweeps behind ``python train.py -m hparams_search=optuna``: the search space from
Hydra's override grammar, a study shared by every worker, and the ask/tell loop that launches
trials through any Hydra launcher. The Hydra plugin (hydra_plugins/segfw_optuna_sweeper/) only
hands these functions its config and launcher."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from segfw.errors import ConfigError
from segfw.studies import JOURNAL_FILE, open_storage

log = logging.getLogger("segfw")

RESULTS_FILE = "optimization_results.yaml"
# The user attribute naming the sweep process that asked for a trial ("host:pid"): a later sweep
# can tell a trial left RUNNING by a crashed sweep from one another live sweep is running.
SWEEPER_ATTR = "segfw_sweeper"

# Launches one batch of trials: their overrides and the trial numbers that name their dirs.
Launch = Callable[[list[list[str]], list[int]], Sequence[JobReturn]]


def search_space(
    params: dict[str, str], arguments: Sequence[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The distributions to sample and the overrides every trial gets.

    Args:
        params: ``hydra.sweeper.params``: a key and a sweep in Hydra's grammar
            (``choice(a, b)``, ``interval(1e-4, 1e-2)``, ``tag(log, interval(...))``,
            ``range(1, 5)``) or a fixed value.
        arguments: the command line's overrides; one of a param's key replaces that param, the
            others are passed to every trial as they are.

    Raises:
        ConfigError: a sweep that is not one of those, naming its key.
    """
    parser = OverridesParser.create()
    given = parser.parse_overrides([f"{key}={value}" for key, value in params.items()])
    # The command line's overrides come last: a value there replaces a param's sweep (fixing
    # backbone=... takes the backbone out of the search), a sweep there replaces its range.
    overrides = {o.get_key_element(): o for o in given}
    for override in parser.parse_overrides(list(arguments)):
        overrides[override.get_key_element()] = override
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for key, override in overrides.items():
        if override.is_sweep_override():
            space[key] = _distribution(key, override)
        else:
            fixed.append(override.input_line or f"{key}={override.get_value_element_as_str()}")
    return space, fixed


def _distribution(key: str, override: Override) -> BaseDistribution:
    sweep = override.value()
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution([_choice(key, value) for value in sweep.list])
    if isinstance(sweep, RangeSweep):
        return CategoricalDistribution([_choice(key, value) for value in override.sweep_iterator()])
    if isinstance(sweep, IntervalSweep) and sweep.start is not None and sweep.end is not None:
        log_scale = "log" in sweep.tags
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return IntDistribution(sweep.start, sweep.end, log=log_scale)
        return FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    raise ConfigError(
        f"{key}={override.input_line}: the Optuna sweeper samples choice(...), range(...) and "
        f"interval(...) (tag(log, interval(...)) on a log scale); write {key} as one of them"
    )


def _choice(key: str, value: object) -> CategoricalChoiceType:
    # Optuna stores a categorical's choices as they are: plain values only.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(
        f"{key}: the choice {value!r} is not a single value; Optuna chooses among numbers, "
        "strings, booleans and null"
    )


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """``hydra.sweeper.storage``, or the sweep dir's journal file when it names none."""
    return storage or str(sweep_dir / JOURNAL_FILE)


def open_study(
    storage: str, study_name: str, direction: str, sampler: Callable[..., Any], pruner: Any
) -> optuna.Study:
    """Creates the study, or loads it to continue it.

    Args:
        sampler: builds the sampler from keyword arguments; given ``seed``, offset by the trials
            the study holds, so that a continued sweep's random start-up trials are new ones and
            the sweep stays reproducible (the seed is a function of the study's history).
    """
    if direction not in ("maximize", "minimize"):
        raise ConfigError(
            f"hydra.sweeper.direction={direction!r}: a study maximizes or minimizes; set "
            "hydra.sweeper.direction=maximize (a score) or minimize (a loss)"
        )
    opened = open_storage(storage)
    names = {summary.study_name: summary for summary in optuna.get_all_study_summaries(opened)}
    trials = names[study_name].n_trials if study_name in names else 0
    study = optuna.create_study(
        storage=opened,
        study_name=study_name,
        direction="maximize" if direction == "maximize" else "minimize",  # as a Literal
        sampler=sampler(trials),
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(
            f"hydra.sweeper.direction={direction}: study {study_name!r} of {storage} was created "
            f"to {study.direction.name.lower()}; continue it with that direction, or name a new "
            "study (hydra.sweeper.study_name=...)"
        )
    if trials:
        log.info("continuing study %r of %s: %d trials so far", study_name, storage, trials)
    return study


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Marks FAIL the trials left RUNNING by a sweep on this machine that no longer runs (killed,
    crashed), so that samplers and the results stop counting them as pending. Trials of live
    sweeps, and of sweeps on other machines, are left alone."""
    host = socket.gethostname()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(SWEEPER_ATTR, ""))
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study.tell(trial.number, state=TrialState.FAIL)
            stale.append(trial.number)
    if stale:
        log.warning("trials %s were left RUNNING by a sweep that stopped: marked FAIL", stale)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_override(storage: str, study_name: str, number: int, pruner: dict | None) -> str:
    """The override that tells a trial's training run which trial it is and how to prune it
    (``optuna_trial`` in train.yaml), so that it can report to the study from its own process or
    SLURM job: a study keeps no pruner, each process that asks whether to prune brings its own."""
    trial = {"storage": storage, "study_name": study_name, "number": number, "pruner": pruner}
    return f"optuna_trial={_hydra_value(trial)}"


def _hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: strings quoted, so that paths and URLs stay whole."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    # Hydra's quoted strings take a backslash as an escape only before a quote.
    return "'" + str(value).replace("'", "\\'") + "'"


def run_sweep(
    study: optuna.Study,
    storage: str,
    space: dict[str, BaseDistribution],
    fixed: list[str],
    n_trials: int,
    n_jobs: int,
    launch: Launch,
    pruner: dict | None = None,
) -> None:
    """Asks for ``n_trials`` trials, ``n_jobs`` at a time, launches each batch and tells the study
    how each ended: COMPLETE with the value the job returned, PRUNED when its pruner stopped it,
    FAIL when the job raised or returned no finite value. A failed trial does not end the sweep.

    Args:
        pruner: the pruner's config (``_target_`` and arguments), passed to every trial.
    """
    if n_trials < 1 or n_jobs < 1:
        raise ConfigError(
            f"hydra.sweeper.n_trials={n_trials}, hydra.sweeper.n_jobs={n_jobs}: both must be at "
            "least 1"
        )
    fail_stale_trials(study)
    sweeper = f"{socket.gethostname()}:{os.getpid()}"
    asked = 0
    while asked < n_trials:
        trials = [study.ask(space) for _ in range(min(n_jobs, n_trials - asked))]
        asked += len(trials)
        for trial in trials:
            trial.set_user_attr(SWEEPER_ATTR, sweeper)
        overrides = [
            [
                *fixed,
                *(f"{key}={value}" for key, value in trial.params.items()),
                trial_override(storage, study.study_name, trial.number, pruner),
            ]
            for trial in trials
        ]
        returns = launch(overrides, [trial.number for trial in trials])
        for trial, job in zip(trials, returns, strict=True):
            _tell(study, trial, job)


def _tell(study: optuna.Study, trial: optuna.Trial, job: JobReturn) -> None:
    if job.status == JobStatus.FAILED:
        error = job._return_value  # JobReturn.return_value would raise it
        if isinstance(error, optuna.TrialPruned):
            study.tell(trial, state=TrialState.PRUNED)
            return
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
        study.tell(trial, state=TrialState.FAIL)
        return
    value = job.return_value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        log.warning("trial %d returned %r, not a finite value: marked FAIL", trial.number, value)
        study.tell(trial, state=TrialState.FAIL)
        return
    study.tell(trial, float(value))
    log.info("trial %d: %s -> %s", trial.number, trial.params, value)


def write_results(study: optuna.Study, path: Path) -> None:
    """The study's best parameters and value, with its trial counts by state, as YAML."""
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    results: dict[str, Any] = {"trials": {k: v for k, v in counts.items() if v}}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        results |= {"best_params": study.best_params, "best_value": study.best_value}
    else:
        log.warning("no trial of study %r completed: no best parameters", study.study_name)
    OmegaConf.save(OmegaConf.create(results), path)
    log.info("best parameters and value: %s", path)
