"""One run dir, read back: its overrides, final metrics, curve, cost and state.

Reads only what ``train.py`` leaves on disk (``.hydra/overrides.yaml``, ``config.yaml``,
``metrics.json``, ``run_info.json``, ``csv/metrics.csv``, ``train.log``), with PyYAML and the
standard library: no torch and no Hydra to import, so a report takes seconds, and a sweep copied
off a cluster reads the same.
"""

from __future__ import annotations

import csv
import json
import math
import pickle
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

# Files whose presence makes a directory a run dir (of train.py or evaluate.py).
RUN_MARKERS = (".hydra", "config.yaml", "train.log", "metrics.json")

FINISHED, FAILED, RUNNING, STOPPED = "finished", "failed", "running", "stopped"

# A run without metrics.json that changed more recently than this counts as running. Epochs write
# checkpoints/last.ckpt and the CSV, and TensorBoard's writer flushes its events every two minutes
# while training; give longer epochs a larger --stale-minutes.
DEFAULT_STALE_MINUTES = 30.0

# Hydra's job log records: "[2024-05-01 12:00:00,123][logger][LEVEL] - message".
LOG_RECORD = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]\[[^\]]*\]\[(\w+)\] - ")
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"
# Only this much of the log's head and tail is read: enough for the first record and the last
# error's traceback, whatever the log's length.
LOG_HEAD, LOG_TAIL = 4096, 65536

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The commands whose Hydra job log (``<job name>.log``) marks their output dir. Only train.py's
# dirs are runs to rank; evaluate.py's score a checkpoint and are listed apart.
TRAIN, EVALUATE = "train", "evaluate"
OTHER_COMMANDS = ("evaluate", "predict", "export", "inspect")

# hydra-submitit-launcher's jobs: segfw/conf/hydra/launcher/submitit_*.yaml keep the plugin's
# submitit_folder, ${hydra.sweep.dir}/.submitit/%j, and Hydra's job id is submitit's (``42``, or
# ``42_3`` for the fourth job of an array). Submitit writes there ``<id>_<task>_result.pkl``,
# ``("error", traceback)`` when the job raised, and the job's stderr ``<id>_<task>_log.err``.
SUBMITIT = ".submitit"
# What slurmstepd writes into a job's stderr when SLURM ends it ("*** JOB 42 ON node7 CANCELLED
# AT 2024-05-01T12:00:00 DUE TO TIME LIMIT ***"), and when the kernel kills it for memory.
SLURM_CANCELLED = re.compile(r"\*\*\* (JOB|STEP) \S+ ON \S+ CANCELLED AT .*\*\*\*")
OUT_OF_MEMORY = re.compile(r"oom[-_ ]kill|out of memory", re.IGNORECASE)
SUBMITIT_EXCEPTION = "Submitted job triggered an exception"


@dataclass
class Run:
    """What a run dir says about its run.

    Attributes:
        path: the run dir.
        name: its name in the report (the dir name: the job number in a sweep).
        state: ``finished`` (has ``metrics.json``), ``failed`` (its log ends in an error, or
            its submitit job's result is an error or its stderr says it ran out of memory),
            ``running`` (changed within the staleness window) or ``stopped`` (SLURM cancelled its
            submitit job, or none of those: killed, or lost with its machine).
        command: the command that wrote the dir: ``train``, or ``evaluate`` (and the others of
            :data:`OTHER_COMMANDS`), from the name of its Hydra job log.
        overrides: the command-line overrides (``.hydra/overrides.yaml``).
        metrics: ``metrics.json``; empty when absent.
        curve: ``(epoch, val/mIoU)`` of each validated training epoch (``csv/metrics.csv``).
        epochs: validated training epochs; None without a CSV log.
        wall_s: seconds from the log's first record to its last; for a run without
            ``metrics.json``, to the last change of its files.
        parameters: the model's parameter count (``run_info.json``).
        optimized_metric: ``optimized_metric`` of the run's config, when it has one.
        class_names: ``data.class_names`` of the run's config.
        error: the last line of the error that ended a failed run, or of SLURM's word on a
            stopped one.
        error_source: the file ``error`` comes from, relative to the run dir's parent.
        last_change: when a file that training keeps writing last changed (seconds since the
            epoch).
        notes: what could not be read, and why.
    """

    path: Path
    name: str
    state: str = STOPPED
    command: str = TRAIN
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    epochs: int | None = None
    wall_s: float | None = None
    parameters: int | None = None
    optimized_metric: str | None = None
    class_names: list[str] = field(default_factory=list)
    error: str | None = None
    error_source: str | None = None
    last_change: float | None = None
    notes: list[str] = field(default_factory=list)

    def value(self, metric: str) -> float | None:
        """The run's final ``metric`` from ``metrics.json``; None when absent or not a number."""
        value = self.metrics.get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return None
        return float(value)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` is a directory that a run wrote into."""
    return path.is_dir() and any((path / marker).exists() for marker in RUN_MARKERS)


def read_run(
    path: Path,
    name: str | None = None,
    stale_minutes: float = DEFAULT_STALE_MINUTES,
    now: float | None = None,
) -> Run:
    """Reads a run dir; files that are missing or unreadable become notes, never exceptions.

    Args:
        path: the run dir.
        name: its name in the report; the dir name by default.
        stale_minutes: a run without ``metrics.json`` is running when a file of it changed within
            this many minutes, and stopped otherwise (unless its log ends in an error: failed).
        now: the time to compare with (seconds since the epoch); the current time by default.
    """
    run = Run(path=path, name=name or path.name, command=_command(path))
    overrides = _load(run, ".hydra/overrides.yaml", load_yaml)
    run.overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []
    metrics = _load(run, "metrics.json", json.loads)
    run.metrics = metrics if isinstance(metrics, dict) else {}
    config = _load(run, "config.yaml", load_yaml)
    if isinstance(config, dict):
        metric, data = config.get("optimized_metric"), config.get("data")
        run.optimized_metric = metric if isinstance(metric, str) else None
        names = data.get("class_names") if isinstance(data, dict) else None
        run.class_names = [str(n) for n in names] if isinstance(names, list) else []
    info = _load(run, "run_info.json", json.loads)
    parameters = info.get("parameters") if isinstance(info, dict) else None
    total = parameters.get("total") if isinstance(parameters, dict) else None
    run.parameters = total if isinstance(total, int) else None
    _read_csv(run)
    start, end, run.error = _read_log(run)
    if run.error:
        run.error_source = f"{run.command}.log"

    now = time.time() if now is None else now
    run.last_change = last_change = _last_change(path)
    if run.metrics:
        run.state = FINISHED
    elif run.error:
        run.state = FAILED
    elif ended := _submitit_end(run):
        # A job that dies without a word in train.log (killed for memory or time, a crash in
        # native code, an error before the log was set up) would look running, or stopped
        # with no reason, forever: submitit's files say how it ended.
        run.state, run.error, run.error_source = ended
    else:
        fresh = last_change is not None and now - last_change <= stale_minutes * 60
        run.state = RUNNING if fresh else STOPPED
        # Training writes no log record per epoch: its files tell how long it went on.
        end = max(end or 0.0, last_change or 0.0) or None
    if start is not None and end is not None:
        run.wall_s = max(end - start, 0.0)
    return run


def _command(path: Path) -> str:
    """The command whose output dir ``path`` is: Hydra names the job log after the script."""
    if (path / "train.log").is_file():
        return TRAIN
    return next((c for c in OTHER_COMMANDS if (path / f"{c}.log").is_file()), TRAIN)


def _submitit_end(run: Run) -> tuple[str, str, str] | None:
    """(state, last line, file) of how the run's submitit job ended, when its files say so.

    The job's files are found from Hydra's job id in ``.hydra/hydra.yaml``; none for a run that
    submitit did not launch, or one still going.
    """
    hydra = _load(run, ".hydra/hydra.yaml", load_yaml)
    hydra = hydra.get("hydra") if isinstance(hydra, dict) else None
    job = hydra.get("job") if isinstance(hydra, dict) else None
    job_id = job.get("id") if isinstance(job, dict) else None
    if job_id is None:
        return None
    folder = run.path.parent / SUBMITIT / str(job_id)
    if not folder.is_dir():
        return None
    for result in sorted(folder.glob("*_result.pkl")):
        traceback = _submitit_error(result)
        if traceback is not None:
            return FAILED, _last_line(traceback), _relative(result, run)
    for stderr in sorted(folder.glob("*_log.err")):
        tail = _tail(stderr).splitlines()
        for index in range(len(tail) - 1, -1, -1):
            line = tail[index].strip()
            if SUBMITIT_EXCEPTION in line:
                return FAILED, _last_line("\n".join(tail[index + 1 :])), _relative(stderr, run)
            if OUT_OF_MEMORY.search(line):
                return FAILED, line, _relative(stderr, run)
            if SLURM_CANCELLED.search(line):
                return STOPPED, line, _relative(stderr, run)
    return None


class _NoObjects(pickle.Unpickler):
    """Reads plain values only: a pickle can run code when it names a class, and a sweep dir
    may come from anywhere."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name} is not read")


def _submitit_error(path: Path) -> str | None:
    """The traceback of a submitit result that is ``("error", traceback)``; None otherwise (a
    job's return value, Hydra's JobReturn, is an object and is not read)."""
    try:
        with path.open("rb") as file:
            result = _NoObjects(file).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError):
        return None
    if isinstance(result, tuple) and len(result) == 2 and result[0] == "error":
        return str(result[1])
    return None


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(file.seek(0, 2) - LOG_TAIL, 0))
            return file.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    return next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "an error")


def _relative(path: Path, run: Run) -> str:
    return str(path.relative_to(run.path.parent))


def load_yaml(text: str) -> Any:
    """YAML as plain Python values (no Hydra, no OmegaConf), with libyaml when present."""
    return yaml.load(text, Loader=_Loader)


def _load(run: Run, relative: str, parse) -> Any:
    """The parsed file ``relative`` of the run dir; None when absent, a note when unreadable."""
    path = run.path / relative
    if not path.is_file():
        return None
    try:
        return parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        run.notes.append(f"{relative} unreadable, left out ({reason})")
        return None


def _read_csv(run: Run) -> None:
    """Sets the run's validation curve and epoch count from Lightning's ``csv/metrics.csv``.

    The CSV holds one row per logging call: ``train/loss`` rows of training steps (none in an
    epoch shorter than ``log_every_n_steps``), a ``val/mIoU`` row at the end of each validated
    epoch, and, once training ends, the best checkpoint's scoring: a ``val/mIoU`` row under the
    epoch counter's final value, then its ``test/`` row at the same epoch and step. That last
    validation row is left out, so that scoring is not taken for one more epoch; it is known by
    the ``metrics.json`` it ends with, or by its test row. A resumed run appends to the file and
    repeats the interrupted epoch, whose last row counts.
    """
    relative = "csv/metrics.csv"
    path = run.path / relative
    if not path.is_file():
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        run.notes.append(f"{relative} unreadable, left out ({error})")
        return
    lines = text.splitlines()
    if text and not text.endswith("\n"):
        # The CSV writer ends every row with a newline: this one was cut short by a kill.
        lines.pop()
        run.notes.append(f"{relative}: left out its last line, cut short (the run was killed?)")
    rows = csv.reader(lines)
    header = next(rows, None)
    if not header or "epoch" not in header:
        run.epochs = 0
        return
    column = {name: i for i, name in enumerate(header)}
    epoch_at, step_at = column["epoch"], column.get("step")
    val_at, test_at = column.get("val/mIoU"), column.get("test/mIoU")
    validations: list[tuple[int, str, float]] = []  # (epoch, step, val/mIoU) in file order
    tested: set[tuple[int, str]] = set()
    for row in rows:
        if len(row) != len(header):
            continue
        epoch = _number(row[epoch_at])
        if epoch is None:
            continue
        step = "" if step_at is None else row[step_at]
        value = None if val_at is None else _number(row[val_at])
        if value is not None:
            validations.append((int(epoch), step, value))
        if test_at is not None and _number(row[test_at]) is not None:
            tested.add((int(epoch), step))
    if validations:
        epoch, step, _ = validations[-1]
        if any(key.startswith("val/") for key in run.metrics) or (epoch, step) in tested:
            validations.pop()
    validated = {epoch: value for epoch, _, value in validations}
    run.curve = sorted(validated.items())
    run.epochs = len(run.curve)


def _number(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _read_log(run: Run) -> tuple[float | None, float | None, str | None]:
    """The times of the first and last records of the job log (``train.log``, ``evaluate.log``), and the run's error.

    The error is the last line of the traceback (or message) of the log's last record when that
    record is an error: a job that fails in a sweep logs its traceback, then stops. A record after
    an error (the run was resumed in its dir) means the run went on.
    """
    path = run.path / f"{run.command}.log"
    if not path.is_file():
        return None, None, None
    try:
        with path.open("rb") as file:
            size = file.seek(0, 2)
            cut = size > LOG_HEAD + LOG_TAIL
            file.seek(0)
            head = file.read(LOG_HEAD if cut else size)
            if cut:
                file.seek(size - LOG_TAIL)
            tail = file.read() if cut else head
    except OSError as failure:
        run.notes.append(f"{path.name} unreadable, left out ({failure})")
        return None, None, None
    head_lines = head.decode("utf-8", "replace").splitlines()
    tail_lines = tail.decode("utf-8", "replace").splitlines()
    if cut:
        tail_lines = tail_lines[1:]  # it starts mid-line

    records = [(i, m) for i, line in enumerate(tail_lines) if (m := LOG_RECORD.match(line))]
    first = next((m for m in map(LOG_RECORD.match, head_lines) if m), None)
    start = _timestamp(first.group(1)) if first else None
    if not records:
        return start, None, None
    last_index, last = records[-1]
    end = _timestamp(last.group(1))
    error = None
    if last.group(2) in ("ERROR", "CRITICAL"):
        message = tail_lines[last_index][last.end() :]
        lines = [message, *tail_lines[last_index + 1 :]]
        error = _last_line("\n".join(lines))
    return start, end, error


def _timestamp(text: str) -> float | None:
    try:
        # Hydra writes local time: right where the time zone is the one the job ran in.
        return datetime.strptime(text, LOG_TIME).timestamp()
    except ValueError:
        return None


def _last_change(path: Path) -> float | None:
    """The latest modification time among the files a training run keeps writing."""
    candidates = [
        path / "train.log",
        path / "csv" / "metrics.csv",
        path / "checkpoints" / "last.ckpt",
        path / ".hydra" / "overrides.yaml",
        *(path / "tensorboard").glob("events.out.tfevents.*"),
    ]
    times = []
    for candidate in candidates:
        try:
            times.append(candidate.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=None)
