"""The leaderboard: runs ranked by one metric, as a terminal table, Markdown and CSV."""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from segfw.report.runs import FAILED, FINISHED, RUNNING, Run
from segfw.report.sweep import MAXIMIZE, Sweep

VAL, TEST = "val/mIoU", "test/mIoU"
# A float override printed in full (optimizer.lr=0.0026070247583707684) is shown to 4 digits.
_LONG_FLOAT = re.compile(r"^[-+]?(\d+\.\d{5,}|\d*\.?\d+[eE][-+]?\d+)$")


@dataclass
class Leaderboard:
    """A sweep's runs, ranked.

    Attributes:
        sweep: what was read.
        ranked: the runs that have the metric, best first (ties keep job order).
        unranked: the others, each with the reason, in job order.
        common: the overrides every run of a sweep shares (none for a single run).
        varying: by run name, the run's overrides that not all runs share (all of them for a
            single run).
    """

    sweep: Sweep
    ranked: list[Run] = field(default_factory=list)
    unranked: list[tuple[Run, str]] = field(default_factory=list)
    common: list[str] = field(default_factory=list)
    varying: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, sweep: Sweep) -> Leaderboard:
        """Ranks ``sweep``'s runs by its metric, in its direction."""
        board = cls(sweep)
        metric = sweep.metric
        for run in sweep.runs:
            if run.value(metric) is not None:
                board.ranked.append(run)
            else:
                board.unranked.append((run, _reason(run, metric)))
        sign = -1.0 if sweep.direction == MAXIMIZE else 1.0
        board.ranked.sort(key=lambda run: sign * (run.value(metric) or 0.0))  # all have a value
        first, *others = [run.overrides for run in sweep.runs] or [[]]
        if others:
            board.common = [o for o in first if all(o in overrides for overrides in others)]
        board.varying = {
            run.name: [o for o in run.overrides if o not in board.common] for run in sweep.runs
        }
        return board

    @property
    def best(self) -> Run | None:
        """The first-ranked run, if any run has the metric."""
        return self.ranked[0] if self.ranked else None

    @property
    def columns(self) -> list[str]:
        """Column titles of the displayed table."""
        metric = [] if self.sweep.metric in (VAL, TEST) else [self.sweep.metric]
        return ["#", "run", "state", *metric, VAL, TEST, "epochs", "wall", "params", "overrides"]

    def ordered(self) -> list[tuple[int | None, Run, str]]:
        """(rank, run, why it is not ranked) of the ranked runs, best first, then the others."""
        ranked = [(rank, run, "") for rank, run in enumerate(self.ranked, 1)]
        return ranked + [(None, run, reason) for run, reason in self.unranked]

    def rows(self) -> list[list[str]]:
        """The displayed table, in :meth:`ordered`'s order, as text cells."""
        rows = []
        metrics = self.columns[3:-4]
        for rank, run, _ in self.ordered():
            rows.append(
                [
                    "-" if rank is None else str(rank),
                    run.name,
                    run.state,
                    *(_score(run.value(m)) for m in metrics),
                    "-" if run.epochs is None else str(run.epochs),
                    duration(run.wall_s),
                    parameters(run.parameters),
                    " ".join(map(short_override, self.varying[run.name])),
                ]
            )
        return rows

    EVALUATION_COLUMNS = ("evaluation", VAL, TEST, "wall", "checkpoint")

    def evaluation_rows(self) -> list[list[str]]:
        """evaluate.py's output dirs, in job order, as text cells of
        :attr:`EVALUATION_COLUMNS`: each scored one checkpoint, which is not a run to rank."""
        return [
            [
                run.name,
                *(_score(run.value(m)) for m in (VAL, TEST)),
                duration(run.wall_s),
                str(run.metrics.get("checkpoint") or "-"),
            ]
            for run in self.sweep.evaluations
        ]

    def summary(self) -> str:
        """One line: where, how many runs in which state, and the ranking."""
        counts: dict[str, int] = {}
        for run in self.sweep.runs:
            counts[run.state] = counts.get(run.state, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in counts.items())
        runs = f"{len(self.sweep.runs)} run{'s' if len(self.sweep.runs) != 1 else ''}"
        runs += f" ({states})" if states else ""
        evaluations = len(self.sweep.evaluations)
        if evaluations:
            runs += f" and {evaluations} evaluation{'s' if evaluations != 1 else ''} (not ranked)"
        return (
            f"{self.sweep.directory}: {runs}, ranked by {self.sweep.metric} "
            f"({self.sweep.direction})"
        )

    def reasons(self) -> list[str]:
        """Why each run that is not ranked is not."""
        return [f"run {run.name}: {reason}" for run, reason in self.unranked]

    def notes(self) -> list[str]:
        """What was left out while reading, and why; the subdirectories that are not runs."""
        notes = []
        for run in self.sweep.runs:
            notes += [f"run {run.name}: {note}" for note in run.notes]
        if self.sweep.ignored:
            notes.append(f"not run dirs, skipped: {', '.join(self.sweep.ignored)}")
        if not self.ranked:
            notes.append(f"no run has {self.sweep.metric} in its metrics.json: nothing is ranked")
        return notes

    def to_text(self) -> str:
        """The leaderboard for a terminal: summary, shared overrides, table and notes."""
        lines = [self.summary()]
        if self.common:
            lines.append("overrides of every run: " + " ".join(map(short_override, self.common)))
        lines += ["", *_aligned(self.columns, self.rows()), ""]
        if self.sweep.evaluations:
            lines += [*_aligned(list(self.EVALUATION_COLUMNS), self.evaluation_rows()), ""]
        lines += [f"- {note}" for note in self.reasons() + self.notes()]
        return "\n".join(lines).rstrip() + "\n"

    def to_markdown(self, images: Sequence[Path] = (), more: Sequence[str] = ()) -> str:
        """The leaderboard as a Markdown page.

        Args:
            images: pictures beside the page, shown below the table.
            more: lines to list after the table's notes (the Optuna study's).
        """
        cells = [self.columns, ["---"] * len(self.columns), *self.rows()]
        lines = [
            f"# Leaderboard: {self.sweep.directory.name}",
            "",
            self.summary().replace(f"{self.sweep.directory}:", f"`{self.sweep.directory}`:"),
            "",
        ]
        if self.common:
            common = " ".join(f"`{short_override(o)}`" for o in self.common)
            lines += [f"Overrides of every run: {common}", ""]
        lines += _markdown_table(cells)
        if self.sweep.evaluations:
            columns = list(self.EVALUATION_COLUMNS)
            evaluations = [columns, ["---"] * len(columns), *self.evaluation_rows()]
            lines += ["", "Evaluations of checkpoints (evaluate.py), not ranked:", ""]
            lines += _markdown_table(evaluations)
        notes = [*self.reasons(), *self.notes(), *more]
        if notes:
            lines += ["", *[f"- {note}" for note in notes]]
        for image in images:
            lines += ["", f"![{image.stem}]({image.name})"]
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        """One row per run, full values: rank (empty when unranked), run, path, state, the
        metric, val and test mIoU, epochs, wall seconds, parameters, every override, note."""
        metric = self.sweep.metric
        header = ["rank", "run", "path", "state", metric]
        header += [m for m in (VAL, TEST) if m != metric]
        header += ["epochs", "wall_s", "parameters", "overrides", "note"]
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for rank, run, reason in self.ordered():
                values = [run.value(m) for m in header[4 : header.index("epochs")]]
                writer.writerow(
                    [
                        "" if rank is None else rank,
                        run.name,
                        str(run.path),
                        run.state,
                        *("" if v is None else repr(v) for v in values),
                        "" if run.epochs is None else run.epochs,
                        "" if run.wall_s is None else round(run.wall_s, 1),
                        "" if run.parameters is None else run.parameters,
                        " ".join(run.overrides),
                        reason,
                    ]
                )


def _markdown_table(cells: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]


def _reason(run: Run, metric: str) -> str:
    if run.state == FINISHED:
        return f"finished, but its metrics.json has no {metric}"
    if run.state == FAILED:
        return f"failed: {run.error} ({run.error_source})"
    if run.state == RUNNING:
        return "running: no metrics.json yet"
    if run.error:  # SLURM's word on why it ended the job
        return f"stopped: {run.error} ({run.error_source})"
    when = f" since {_clock(run.last_change)}" if run.last_change else ""
    return f"stopped: no metrics.json, no error in train.log, nothing written{when} (killed?)"


def _clock(seconds: float) -> str:
    return datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def short_override(override: str) -> str:
    """``key=value`` with a long float value shortened to 4 significant digits."""
    key, equals, value = override.partition("=")
    if equals and _LONG_FLOAT.match(value):
        return f"{key}={float(value):.4g}"
    return override


def duration(seconds: float | None) -> str:
    """``42 s``, ``12 min 04 s``, ``3 h 05 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def parameters(count: int | None) -> str:
    """``6.63 M``, ``850 k``; ``-`` when unknown."""
    if count is None:
        return "-"
    if count >= 1e6:
        return f"{count / 1e6:.2f} M"
    return f"{count / 1e3:.0f} k" if count >= 1e3 else str(count)


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain-text table: columns padded to their widest cell, the last one left free."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
