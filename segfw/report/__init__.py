"""Reviewing finished and running sweeps: a leaderboard ranked by the sweep's metric, the runs'
validation curves, an Optuna study's history and parameter importances, and a self-contained
``report.html``.

    python -m segfw.report <run or sweep dir> [--output DIR] [--metric NAME]

Reads the files runs leave on disk with PyYAML and the standard library (no Hydra, no torch), so
it works on a sweep that is still running, or copied from a cluster.
"""

from segfw.report.cli import Report, write_report
from segfw.report.leaderboard import Leaderboard
from segfw.report.sweep import ReportError, Sweep, read_sweep

__all__ = ["Leaderboard", "Report", "ReportError", "Sweep", "read_sweep", "write_report"]
