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


@dataclass
class Run:
    """What a run dir says about its run.

    Attributes:
        path: the run dir.
        name: its name in the report (the dir name: the job number in a sweep).
        state: ``finished`` (has ``metrics.json``), ``failed`` (its log ends in an error),
            ``running`` (changed within the staleness window) or ``stopped`` (none of those:
            killed, or lost with its machine).
        overrides: the command-line overrides (``.hydra/overrides.yaml``).
        metrics: ``metrics.json``; empty when absent.
        curve: ``(epoch, val/mIoU)`` of each validated training epoch (``csv/metrics.csv``).
        epochs: validated training epochs; None without a CSV log.
        wall_s: seconds from the log's first record to its last; for a run without
            ``metrics.json``, to the last change of its files.
        parameters: the model's parameter count (``run_info.json``).
        optimized_metric: ``optimized_metric`` of the run's config, when it has one.
        class_names: ``data.class_names`` of the run's config.
        error: the last line of the error that ended a failed run.
        last_change: when a file that training keeps writing last changed (seconds since the
            epoch).
        notes: what could not be read, and why.
    """

    path: Path
    name: str
    state: str = STOPPED
    overrides: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    epochs: int | None = None
    wall_s: float | None = None
    parameters: int | None = None
    optimized_metric: str | None = None
    class_names: list[str] = field(default_factory=list)
    error: str | None = None
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
    run = Run(path=path, name=name or path.name)
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

    now = time.time() if now is None else now
    run.last_change = last_change = _last_change(path)
    if run.metrics:
        run.state = FINISHED
    elif run.error:
        run.state = FAILED
    else:
        fresh = last_change is not None and now - last_change <= stale_minutes * 60
        run.state = RUNNING if fresh else STOPPED
        # Training writes no log record per epoch: its files tell how long it went on.
        end = max(end or 0.0, last_change or 0.0) or None
    if start is not None and end is not None:
        run.wall_s = max(end - start, 0.0)
    return run


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

    The CSV holds one row per logging call: ``train/loss`` rows of each training step, a
    ``val/mIoU`` row at the end of each validated epoch, and, once training ends, the best
    checkpoint's scoring under the epoch counter's final value. The curve keeps the validation
    rows of epochs that trained, so that scoring is not taken for one more epoch; a resumed run
    appends to the file and repeats the interrupted epoch, whose last row counts.
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
    epoch_at, val_at, train_at = column["epoch"], column.get("val/mIoU"), column.get("train/loss")
    trained: set[int] = set()
    validated: dict[int, float] = {}
    for row in rows:
        if len(row) != len(header):
            continue
        epoch = _number(row[epoch_at])
        if epoch is None:
            continue
        if train_at is not None and _number(row[train_at]) is not None:
            trained.add(int(epoch))
        value = None if val_at is None else _number(row[val_at])
        if value is not None:
            validated[int(epoch)] = value
    # Without a train/loss column the rows cannot be told apart; keep them all.
    keep = trained or set(validated)
    run.curve = sorted((e, v) for e, v in validated.items() if e in keep)
    run.epochs = len(run.curve)


def _number(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _read_log(run: Run) -> tuple[float | None, float | None, str | None]:
    """The times of the first and last records of ``train.log``, and the run's error.

    The error is the last line of the traceback (or message) of the log's last record when that
    record is an error: a job that fails in a sweep logs its traceback, then stops. A record after
    an error (the run was resumed in its dir) means the run went on.
    """
    path = run.path / "train.log"
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
        run.notes.append(f"train.log unreadable, left out ({failure})")
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
        error = next((line.strip() for line in reversed(lines) if line.strip()), "an error")
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
