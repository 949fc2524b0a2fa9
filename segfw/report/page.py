"""``report.html``: the leaderboard, the curves, the Optuna plots, and the best run's per-class IoU
and worst cases, in one self-contained file (pictures inlined as data URIs, no script, no link
to anything outside it), to open from disk or send around."""

from __future__ import annotations

import base64
from datetime import datetime
from html import escape
from pathlib import Path

from segfw.report.figures import StudyFigures
from segfw.report.leaderboard import Leaderboard, short_override
from segfw.report.runs import Run

NO_PER_IMAGE = "no per-image scores (run evaluate.py on the best checkpoint)"

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px; color: #1d232b; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; }
h3 { font-size: 15px; }
code { background: #f1f3f5; padding: 1px 4px; border-radius: 3px; font-size: 12.5px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border-bottom: 1px solid #dde1e6; padding: 4px 10px; text-align: left;
         vertical-align: top; overflow-wrap: anywhere; }
th { background: #f1f3f5; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #e6f4ea; font-weight: 600; }
.state { border-radius: 3px; padding: 0 6px; font-size: 12px; }
.finished { background: #d3f0dc; } .failed { background: #fad4d4; }
.running { background: #d6e6fb; } .stopped { background: #ececec; }
td.note { color: #7b2d26; max-width: 420px; overflow-wrap: anywhere; font-size: 12.5px; }
.track { background: #eef1f4; width: 160px; height: 10px; display: inline-block;
         vertical-align: middle; margin-left: 8px; }
.bar { background: #4c78a8; height: 10px; display: block; }
.notes li { color: #5a6470; } .muted { color: #5a6470; }
img { max-width: 100%; border: 1px solid #dde1e6; }
"""


def render(board: Leaderboard, curves: Path | None, study: StudyFigures) -> str:
    """The HTML page of a leaderboard and its pictures (read from disk and inlined)."""
    sweep = board.sweep
    title = f"segfw report: {sweep.directory.name}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        # An empty icon: without it the browser asks for /favicon.ico.
        '<link rel="icon" href="data:,">',
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">{escape(board.summary())}</p>',
    ]
    if board.common:
        common = " ".join(f"<code>{escape(short_override(o))}</code>" for o in board.common)
        parts.append(f"<p>Overrides of every run: {common}</p>")
    parts += ["<h2>Leaderboard</h2>", _leaderboard(board)]
    if sweep.evaluations:
        parts += [
            "<h2>Evaluations of checkpoints (evaluate.py), not ranked</h2>",
            _evaluations(board),
        ]
    # The reasons why runs are not ranked are in the table's note column.
    notes = board.notes()
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in notes))
        parts.append("</ul>")
    parts.append("<h2>Validation mIoU per epoch</h2>")
    parts.append(
        _image(curves, "every run's val/mIoU per epoch")
        if curves
        else '<p class="muted">No run has logged a validation epoch yet (csv/metrics.csv).</p>'
    )
    if sweep.study is not None:
        parts.append("<h2>Optuna study</h2>")
        if study.summary:
            parts.append(
                f"<p>{escape(study.summary)} in <code>{escape(str(sweep.study))}</code></p>"
            )
        for path, alt in (
            (study.history, "optimization history"),
            (study.importances, "parameter importances"),
        ):
            if path:
                parts.append(f"<h3>{alt.capitalize()}</h3>{_image(path, alt)}")
        if study.notes:
            parts.append('<ul class="notes">')
            parts += [f"<li>{escape(note)}</li>" for note in study.notes]
            parts.append("</ul>")
    parts.append(_best_run(board))
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f'<p class="muted">Written by <code>python -m segfw.report</code> on {when}.</p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _leaderboard(board: Leaderboard) -> str:
    # A note column for the runs that are not ranked: why not (a failed run's error).
    noted = bool(board.unranked)
    columns = [*board.columns, *(["note"] if noted else [])]
    reasons = [reason for _, _, reason in board.ordered()]
    numeric = {i for i, c in enumerate(columns) if "/" in c or c in ("epochs", "params", "wall")}
    rows = []
    for index, (cells, reason) in enumerate(zip(board.rows(), reasons, strict=True)):
        tds = []
        for i, cell in enumerate(cells):
            if columns[i] == "state":
                tds.append(f'<td><span class="state {cell}">{escape(cell)}</span></td>')
            else:
                tds.append(f"<td{' class=num' if i in numeric else ''}>{escape(cell)}</td>")
        if noted:
            tds.append(f'<td class="note">{escape(reason)}</td>')
        best = ' class="best"' if index == 0 and board.ranked else ""
        rows.append(f"<tr{best}>{''.join(tds)}</tr>")
    return _table("leaderboard", columns, rows)


def _evaluations(board: Leaderboard) -> str:
    rows = [
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in cells) + "</tr>"
        for cells in board.evaluation_rows()
    ]
    return _table("evaluations", list(board.EVALUATION_COLUMNS), rows)


def _table(name: str, columns: list[str], rows: list[str]) -> str:
    # A header such as val/IoU/<class name> may break after its slashes and underscores, so that
    # it does not widen its column past the page; CSS breaks any other long word.
    head = "".join(f"<th>{_breakable(c)}</th>" for c in columns)
    return (
        f'<table id="{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _breakable(text: str) -> str:
    return "".join(escape(c) + ("<wbr>" if c in "/_" else "") for c in text)


def _best_run(board: Leaderboard) -> str:
    best = board.best
    if best is None:
        return (
            "<h2>Best run</h2>"
            f'<p class="muted">No run has {escape(board.sweep.metric)}: nothing to show.</p>'
        )
    parts = [
        f"<h2>Best run: {escape(best.name)}</h2>",
        f"<p><code>{escape(str(best.path))}</code>, {escape(board.sweep.metric)} = "
        f"{best.value(board.sweep.metric):.4f}</p>",
    ]
    if best.overrides:
        parts.append(
            "<p>Overrides: "
            + " ".join(f"<code>{escape(short_override(o))}</code>" for o in best.overrides)
            + "</p>"
        )
    checkpoint = best.metrics.get("best_checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        parts.append(f"<p>Best checkpoint: <code>{escape(checkpoint)}</code></p>")
    parts += ["<h3>Per-class IoU</h3>", _per_class(best), "<h3>Worst cases</h3>", _worst(best)]
    return "\n".join(parts)


def _per_class(run: Run) -> str:
    """A table of ``<split>/IoU/<class>`` from metrics.json, in the dataset's class order."""
    keys = [key.split("/", 2) for key in run.metrics if key.count("/") >= 2]
    per_class = [(split, name) for split, kind, name in keys if kind == "IoU"]
    splits = [s for s in ("val", "test") if any(split == s for split, _ in per_class)]
    found = {name for split, name in per_class if split in splits}
    classes = [c for c in run.class_names if c in found] + sorted(found - set(run.class_names))
    if not classes:
        return '<p class="muted">metrics.json holds no per-class IoU.</p>'
    head = "".join(f"<th>{s} IoU</th>" for s in splits)
    rows = []
    for name in classes:
        cells = []
        for split in splits:
            value = run.value(f"{split}/IoU/{name}")
            if value is None:  # a class absent from the split's labels and predictions
                cells.append('<td class="muted">-</td>')
            else:
                width = round(max(0.0, min(value, 1.0)) * 100, 1)
                bar = f'<span class="track"><span class="bar" style="width:{width}%"></span></span>'
                cells.append(f'<td class="num">{value:.4f}{bar}</td>')
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    return (
        f'<table id="per-class"><thead><tr><th>class</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _worst(run: Run) -> str:
    """The run's worst-case gallery (``worst_cases/val.png``, else ``test.png``), if written."""
    galleries = [run.path / "worst_cases" / f"{split}.png" for split in ("val", "test")]
    gallery = next((path for path in galleries if path.is_file()), None)
    if gallery is None:
        return f'<p class="muted">{escape(NO_PER_IMAGE)}</p>'
    scores = run.path / "per_image.csv"
    parts = [
        f"<p>The lowest-scoring images of the {gallery.stem} split, each as image | ground truth | "
        "prediction | error map."
    ]
    if scores.is_file():
        parts.append(f" Every image's scores: <code>{escape(str(scores))}</code>.")
    parts.append("</p>")
    parts.append(_image(gallery, f"worst cases of the {gallery.stem} split"))
    return "".join(parts)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'
