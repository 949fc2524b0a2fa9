"""A directory to report on: one run dir, or a ``-m`` sweep dir of job dirs, with the metric to
rank by and the Optuna study when it has one."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from segfw.errors import SegfwError
from segfw.report.runs import (
    DEFAULT_STALE_MINUTES,
    EVALUATE,
    TRAIN,
    Run,
    is_run_dir,
    load_yaml,
    read_run,
)
from segfw.studies import JOURNAL_FILE

DEFAULT_METRIC = "val/mIoU"
MAXIMIZE, MINIMIZE = "maximize", "minimize"


class ReportError(SegfwError):
    """Nothing to report: the message says what was found instead."""


@dataclass
class Sweep:
    """Runs to put side by side.

    Attributes:
        directory: the directory given.
        runs: its training runs, in job order.
        evaluations: evaluate.py's output dirs among them: scores of a checkpoint, listed apart
            and never ranked with the runs.
        ignored: subdirectories that are not run dirs (those of predict.py and the other
            commands among them).
        metric: the metric to rank by.
        optimized_metric: the sweep's ``optimized_metric`` (its runs' configs; ``val/mIoU``
            when they have none): the value an Optuna study's trials hold.
        direction: ``maximize`` or ``minimize``.
        study: the storage of the sweep's Optuna study, when it has one: the sweep dir's journal
            file, or the database URL the sweeper was given (:func:`segfw.studies.open_storage`).
        study_name: the study's name from the sweeper's config; None: the file's only study.
    """

    directory: Path
    runs: list[Run]
    evaluations: list[Run] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    metric: str = DEFAULT_METRIC
    optimized_metric: str = DEFAULT_METRIC
    direction: str = MAXIMIZE
    study: str | None = None
    study_name: str | None = None


def read_sweep(
    directory: Path,
    metric: str | None = None,
    direction: str | None = None,
    stale_minutes: float = DEFAULT_STALE_MINUTES,
) -> Sweep:
    """Reads a run dir or a sweep dir (finished or not).

    Args:
        directory: a run dir, or a dir whose subdirectories are run dirs (a ``-m`` sweep, or
            ``logs/runs`` itself).
        metric: the metric to rank by; by default the runs' ``optimized_metric``, else
            ``val/mIoU``.
        direction: ``maximize`` or ``minimize``; by default the sweeper's direction when ranking by
            its metric, else ``minimize`` for a loss and ``maximize`` for the rest.
        stale_minutes: see :func:`segfw.report.runs.read_run`.

    Raises:
        ReportError: ``directory`` is missing, or holds no run.
    """
    if not directory.is_dir():
        raise ReportError(f"{directory} is not a directory; pass a run dir or a sweep dir.")
    ignored: list[str] = []
    found: list[Run] = []
    if is_run_dir(directory):
        found = [read_run(directory, stale_minutes=stale_minutes)]
    else:
        try:
            children = sorted(directory.iterdir(), key=_job_order)
        except OSError as error:
            raise ReportError(f"{directory} cannot be read: {error}") from None
        for child in children:
            if not child.is_dir() or child.name.startswith("."):
                continue  # Hydra's and submitit's own folders (.submitit) among the jobs
            if is_run_dir(child):
                found.append(read_run(child, stale_minutes=stale_minutes))
            else:
                ignored.append(child.name)
    # logs/runs holds every single-run command's dir: only train.py's are runs to rank.
    runs = [run for run in found if run.command == TRAIN]
    evaluations = [run for run in found if run.command == EVALUATE]
    ignored += [
        f"{run.name} ({run.command}.py)" for run in found if run.command not in (TRAIN, EVALUATE)
    ]
    if not runs and not evaluations:
        raise ReportError(_no_run_message(directory, ignored))

    sweeper = _sweeper_config(runs)
    optimized = Counter(r.optimized_metric for r in runs if r.optimized_metric).most_common(1)
    optimized_metric = optimized[0][0] if optimized else DEFAULT_METRIC
    metric = metric or optimized_metric
    if direction is None:
        direction = sweeper.get("direction") if metric == optimized_metric else None
        if isinstance(direction, list):  # a multi-objective study: its first objective
            direction = direction[0]
        if direction not in (MAXIMIZE, MINIMIZE):
            direction = MINIMIZE if "loss" in metric else MAXIMIZE
    study_name = sweeper.get("study_name")
    return Sweep(
        directory=directory,
        runs=runs,
        evaluations=evaluations,
        ignored=ignored,
        metric=metric,
        optimized_metric=optimized_metric,
        direction=direction,
        study=_study_storage(directory, sweeper.get("storage")),
        study_name=study_name if isinstance(study_name, str) else None,
    )


def _study_storage(directory: Path, storage: object) -> str | None:
    """The sweeper's storage: a database URL, a journal file that exists, else the sweep dir's."""
    if isinstance(storage, str) and ("://" in storage or Path(storage).is_file()):
        return storage
    journal = directory / JOURNAL_FILE
    return str(journal) if journal.is_file() else None


def _job_order(path: Path) -> tuple[bool, int, str]:
    """Job dirs in number order (2 before 10), then any others by name."""
    return (not path.name.isdigit(), int(path.name) if path.name.isdigit() else 0, path.name)


def _sweeper_config(runs: list[Run]) -> dict:
    """``hydra.sweeper`` of the first run that kept Hydra's config (``.hydra/hydra.yaml``)."""
    for run in runs:
        path = run.path / ".hydra" / "hydra.yaml"
        if not path.is_file():
            continue
        try:
            config = load_yaml(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        hydra = config.get("hydra") if isinstance(config, dict) else None
        sweeper = hydra.get("sweeper") if isinstance(hydra, dict) else None
        if isinstance(sweeper, dict):
            return sweeper
    return {}


def _no_run_message(directory: Path, ignored: list[str]) -> str:
    """Says that ``directory`` holds no run, and where runs are when they are one level down."""
    sweeps = [name for name in ignored if _holds_runs(directory / name)]
    if sweeps:
        shown = ", ".join(str(directory / name) for name in sweeps[:3])
        more = f" and {len(sweeps) - 3} more" if len(sweeps) > 3 else ""
        return f"{directory} holds sweep dirs, not runs: pass one of them ({shown}{more})."
    return (
        f"{directory} holds no run: a run dir has .hydra/, config.yaml, train.log or "
        f"metrics.json, and a sweep dir has run dirs (0/, 1/, ...)."
    )


def _holds_runs(directory: Path) -> bool:
    try:
        return any(map(is_run_dir, directory.iterdir()))
    except OSError:
        return False
