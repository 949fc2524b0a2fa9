"""The report's pictures, as PNG files: every run's validation curve in one figure, and an Optuna
study's optimization history and parameter importances (Optuna's own matplotlib plots)."""

from __future__ import annotations

import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from segfw.report.leaderboard import Leaderboard, short_override
from segfw.studies import open_storage

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVES = "val_mIoU.png"
HISTORY = "optuna_history.png"
IMPORTANCES = "optuna_importances.png"
DPI = 100
# Legend entries (a run's overrides: long for a large search space) wrap at this many
# characters, which fit one of the legend's two columns at the figure's width.
LABEL_CHARACTERS = 60


def plot_curves(board: Leaderboard, path: Path) -> Path | None:
    """Draws each run's ``val/mIoU`` per epoch into one figure, the best run's line thickest.

    Returns:
        ``path``, or None when no run has a validation curve (nothing is written then).
    """
    figure = curves_figure(board)
    if figure is None:
        return None
    # Tight: whatever the legend's size, the file holds all of it.
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def curves_figure(board: Leaderboard) -> Figure | None:
    """The figure :func:`plot_curves` saves; None when no run has a validation curve."""
    # Imported here, as Optuna is below: reading runs and ranking them need neither.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    runs = [run for run in board.sweep.runs if run.curve]
    if not runs:
        return None
    labels = []
    for run in runs:
        label = " ".join(map(short_override, board.varying[run.name]))
        label = f"{run.name}: {label}" if label else run.name
        labels.append(textwrap.fill(label, LABEL_CHARACTERS, break_long_words=False))
    # A Figure without pyplot: no global state, no GUI backend, drawn by Agg into the file.
    # The legend goes below the axes, two runs a row, and the figure grows with its lines.
    rows = [labels[i : i + 2] for i in range(0, len(labels), 2)]
    legend_lines = sum(max(label.count("\n") + 1 for label in row) for row in rows)
    figure = Figure(figsize=(10, 4.5 + 0.2 * legend_lines), layout="constrained")
    axes = figure.add_subplot()
    # Ten colours, then twenty, then the twenty again dashed and dotted: every line its own look.
    palette = colormaps["tab10" if len(runs) <= 10 else "tab20"].colors  # type: ignore[attr-defined]  # a ListedColormap
    best = board.best
    for index, (run, label) in enumerate(zip(runs, labels, strict=True)):
        epochs, values = zip(*run.curve, strict=True)
        is_best = best is not None and run.name == best.name
        axes.plot(
            epochs,
            values,
            marker="o" if len(epochs) <= 30 else None,
            markersize=3,
            color=palette[index % len(palette)],
            linestyle=("-", "--", ":")[index // len(palette) % 3],
            linewidth=2.8 if is_best else 1.2,
            zorder=3 if is_best else 2,
            label=label + (" (best)" if is_best else ""),
        )
    axes.set_xlabel("epoch")
    axes.set_ylabel("val/mIoU")
    axes.set_title(f"Validation mIoU per epoch: {board.sweep.directory.name}")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return figure


@dataclass
class StudyFigures:
    """What was drawn of an Optuna study.

    Attributes:
        summary: the study's name and its trials by state; None when it could not be read.
        history: the optimization history's PNG, if drawn.
        importances: the parameter importances' PNG, if drawn.
        notes: why a figure is missing.
    """

    summary: str | None = None
    history: Path | None = None
    importances: Path | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The summary and the notes, for the terminal and the Markdown page."""
        return ([self.summary] if self.summary else []) + self.notes


def plot_study(board: Leaderboard, output: Path) -> StudyFigures:
    """Draws the sweep's Optuna study with ``optuna.visualization.matplotlib``.

    Needs the ``sweep`` extra (Optuna); the importances also need scikit-learn (Optuna's
    importance evaluators fit a random forest) and two completed trials. What cannot be drawn is
    said in ``notes``.
    """
    sweep = board.sweep
    figures = StudyFigures()
    if sweep.study is None:
        return figures
    label = sweep.study if "://" in sweep.study else Path(sweep.study).name
    try:
        import optuna
        from matplotlib import pyplot
        from optuna.importance import MeanDecreaseImpurityImportanceEvaluator
        from optuna.visualization import matplotlib as optuna_plots
    except ImportError as error:
        figures.notes.append(
            f"{label}: no study plots, {error.name or 'optuna'} is not installed "
            "(pip install 'segfw[sweep]')"
        )
        return figures
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = open_storage(sweep.study)
        study = optuna.load_study(study_name=sweep.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
    # The study is input from anywhere: SQLAlchemy's or the journal's errors, a schema from
    # another Optuna version, a study name it does not hold. Whichever it is, the rest of the report stands.
    except Exception as error:
        figures.notes.append(f"{label}: not readable as an Optuna study ({error})")
        return figures

    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    counts = ", ".join(f"{n} {state}" for state, n in states.items())
    figures.summary = f"Optuna study {study.study_name!r}: {len(trials)} trials ({counts})"
    completed = states.get("complete", 0)
    target = sweep.optimized_metric
    with warnings.catch_warnings():
        # Optuna calls its matplotlib plots experimental and warns at every call.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if completed == 0:
            figures.notes.append("optimization history: no trial of the study has completed")
        else:
            figures.history = _save(
                lambda: optuna_plots.plot_optimization_history(study, target_name=target),
                output / HISTORY,
                pyplot,
                figures.notes,
            )
        if completed < 2:
            figures.notes.append(
                f"parameter importances: need 2 completed trials, the study has {completed}"
            )
        elif not _has_sklearn():
            figures.notes.append(
                "parameter importances: need scikit-learn (pip install 'segfw[sweep]')"
            )
        else:
            # Mean decrease in impurity: one seeded random forest, so that the same study gives
            # the same importances (Optuna 2.10's default fANOVA failed on current scikit-learn).
            evaluator = MeanDecreaseImpurityImportanceEvaluator(seed=0)
            figures.importances = _save(
                lambda: optuna_plots.plot_param_importances(
                    study, evaluator=evaluator, target_name=target
                ),
                output / IMPORTANCES,
                pyplot,
                figures.notes,
            )
    return figures


def _save(plot, path: Path, pyplot, notes: list[str]) -> Path | None:
    """Calls one of Optuna's plot functions and saves its figure; its failure becomes a note."""
    try:
        axes = plot()
    # Optuna's plots raise ValueError or RuntimeError for studies they cannot draw (a search
    # space that changed between trials, one parameter value only); a note says which.
    except Exception as error:
        reason = str(error)
        notes.append(f"{path.stem.replace('_', ' ')}: Optuna could not draw it ({reason})")
        return None
    figure = axes.figure
    figure.set_size_inches(9, 4.5)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot.close(figure)
    return path


def _has_sklearn() -> bool:
    """Whether Optuna's importance evaluators can fit their random forest."""
    try:
        import sklearn.ensemble  # noqa: F401
    except ImportError:
        return False
    return True
