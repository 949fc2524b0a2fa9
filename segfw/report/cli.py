"""The command line: ``python -m segfw.report <run or sweep dir>``.

Prints the leaderboard and writes ``leaderboard.csv``, ``leaderboard.md``, ``val_mIoU.png``,
the Optuna study's plots (``optuna_history.png``, ``optuna_importances.png``) and
``report.html``. Exits 0 when it wrote a report, also when some runs were left out (it says
which and why); 1 with one message when there was nothing to report.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from segfw.report import figures, page
from segfw.report.leaderboard import Leaderboard
from segfw.report.runs import DEFAULT_STALE_MINUTES
from segfw.report.sweep import MAXIMIZE, MINIMIZE, ReportError, read_sweep

CSV, MARKDOWN, HTML = "leaderboard.csv", "leaderboard.md", "report.html"


def main(argv: list[str] | None = None) -> int:
    """Runs the command with ``argv`` (``sys.argv[1:]`` by default); returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m segfw.report",
        description="Leaderboard, curves and an HTML page of a run or a -m sweep (finished or "
        "still running).",
    )
    parser.add_argument("directory", type=Path, help="a run dir, or a sweep dir of run dirs")
    parser.add_argument(
        "-o", "--output", type=Path, help="where to write the files (default: the directory)"
    )
    parser.add_argument(
        "--metric",
        help="the metrics.json key to rank by (default: the runs' optimized_metric, else val/mIoU)",
    )
    parser.add_argument(
        "--direction",
        choices=(MAXIMIZE, MINIMIZE),
        help="default: the sweeper's for its metric, minimize for a loss, else maximize",
    )
    parser.add_argument(
        "--stale-minutes",
        type=float,
        default=DEFAULT_STALE_MINUTES,
        help="a run without metrics.json and without an error in train.log is running when one "
        "of its files changed within this many minutes, stopped otherwise (default: "
        "%(default)g)",
    )
    args = parser.parse_args(argv)

    # The only backend that needs no display; set before Optuna's plots import pyplot.
    import matplotlib

    matplotlib.use("Agg")
    try:
        sweep = read_sweep(args.directory, args.metric, args.direction, args.stale_minutes)
        board = Leaderboard.of(sweep)
        written = write_report(board, args.output or args.directory)
    except ReportError as error:
        print(f"segfw.report: {error}", file=sys.stderr)
        return 1
    try:
        print(board.to_text(), end="")
        print("".join(f"- {line}\n" for line in written.study.lines()), end="")
        print(f"\nwrote {', '.join(p.name for p in written.files)} in {written.output}")
        sys.stdout.flush()
    except BrokenPipeError:
        # Piped into head, say: the reader has what it wanted, and the files are written. Point
        # stdout at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


@dataclass
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        output: the directory written into.
        files: the files, in the order written.
        study: what was drawn of the Optuna study, and why anything was not.
    """

    output: Path
    files: list[Path]
    study: figures.StudyFigures


def write_report(board: Leaderboard, output: Path) -> Report:
    """Writes the leaderboard's CSV, Markdown, pictures and HTML page into ``output``.

    Raises:
        ReportError: ``output`` cannot be written.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
        curves = figures.plot_curves(board, output / figures.CURVES)
        study = figures.plot_study(board, output)
        images = [p for p in (curves, study.history, study.importances) if p]
        board.write_csv(output / CSV)
        markdown = board.to_markdown(images, study.lines())
        (output / MARKDOWN).write_text(markdown, encoding="utf-8")
        (output / HTML).write_text(page.render(board, curves, study), encoding="utf-8")
    except OSError as error:
        raise ReportError(f"cannot write the report into {output}: {error}") from None
    return Report(output, [output / CSV, output / MARKDOWN, *images, output / HTML], study)
