"""python -m segfw.report: the leaderboard of real grid and Optuna sweeps, bad input, speed on 20
runs, report.html in a real browser, and the sweep extra (sweeps without it fail with the install
command; nothing in core imports Optuna)."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from helpers import tiny
from segfw.report.cli import main
from segfw.studies import JOURNAL_FILE, open_storage

ROOT = Path(__file__).resolve().parents[1]

# 32 px, one training batch, two epochs: a job takes a few seconds, and has a curve.
SMALL = [
    "model.height=32",
    "model.width=32",
    "data.sizes.train=8",
    "data.sizes.val=8",
    "data.sizes.test=8",
    "trainer.max_epochs=2",
]
CLASSES = ["background", "circle", "triangle", "square"]


def _train_sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [o for o in tiny(SMALL) if not o.startswith("data.batch_size=")]
    command = [sys.executable, "train.py", "-m", *args, f"hydra.sweep.dir={sweep_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _report(directory: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m segfw.report`` as a user runs it."""
    command = [sys.executable, "-m", "segfw.report", str(directory), *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _run_main(capsys, *args: str | Path) -> tuple[int, str, str]:
    """The same in this process (faster): exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _leaderboard(directory: Path) -> list[dict[str, str]]:
    with (directory / "leaderboard.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _ranking_by_metrics_json(sweep_dir: Path, metric: str = "val/mIoU") -> list[tuple[str, float]]:
    """(job, value) of every job with a metrics.json, best first, from the files alone."""
    scores = [
        (p.parent.name, json.loads(p.read_text())[metric]) for p in sweep_dir.glob("*/metrics.json")
    ]
    return sorted(scores, key=lambda score: -score[1])


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    """A basic-sweeper grid of three learning rates."""
    sweep_dir = tmp_path_factory.mktemp("grid")
    result = _train_sweep(sweep_dir, "data.batch_size=8", "optimizer.lr=1e-3,3e-3,1e-2")
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory) -> Path:
    """Three Optuna trials, the second of which fails: with the seeded sampler, the batch sizes
    drawn are 8, 0 (no loader can be built) and 8."""
    sweep_dir = tmp_path_factory.mktemp("optuna")
    result = _train_sweep(
        sweep_dir,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "data.batch_size=choice(8,0)",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def test_grid_sweep_is_ranked_as_its_metrics_json_say(grid_sweep):
    result = _report(grid_sweep)
    assert result.returncode == 0, result.stderr
    expected = _ranking_by_metrics_json(grid_sweep)
    assert len(expected) == 3
    rows = _leaderboard(grid_sweep)
    assert [(r["run"], float(r["val/mIoU"])) for r in rows] == expected
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    for row in rows:
        run = grid_sweep / row["run"]
        metrics = json.loads((run / "metrics.json").read_text())
        info = json.loads((run / "run_info.json").read_text())
        assert float(row["test/mIoU"]) == metrics["test/mIoU"]
        assert row["state"] == "finished" and row["epochs"] == "2"
        assert int(row["parameters"]) == info["parameters"]["total"]
        assert float(row["wall_s"]) > 0
        assert row["overrides"].split() == yaml.safe_load(
            (run / ".hydra/overrides.yaml").read_text()
        )
    # The printed table: runs in rank order, each with its learning rate and score.
    table = [line.split() for line in result.stdout.splitlines() if re.match(r"^\d+ ", line)]
    assert [(line[1], line[3]) for line in table] == [(j, f"{v:.4f}") for j, v in expected]
    assert all(line[-1].startswith("optimizer.lr=") for line in table)
    assert (grid_sweep / "leaderboard.md").read_text().count("| finished |") == 3
    assert _is_png(grid_sweep / "val_mIoU.png")
    assert not (grid_sweep / "optuna_history.png").exists()
    assert "wrote leaderboard.csv, leaderboard.md, val_mIoU.png, report.html" in result.stdout


def test_optuna_sweep_is_ranked_with_its_failed_trial_and_study_plots(
    optuna_sweep, tmp_path, capsys
):
    code, out, err = _run_main(capsys, optuna_sweep, "--output", tmp_path)
    assert code == 0, err
    expected = _ranking_by_metrics_json(optuna_sweep)
    rows = _leaderboard(tmp_path)
    ranked = [(r["run"], float(r["val/mIoU"])) for r in rows if r["rank"]]
    assert ranked == expected and len(ranked) == 2
    # The study holds the same values as the trials' metrics.json.
    import optuna  # the test extra holds the sweep extra

    study = optuna.load_study(study_name="segfw", storage=open_storage(optuna_sweep / JOURNAL_FILE))
    values = sorted((t.value for t in study.trials if t.value is not None), reverse=True)
    assert values == pytest.approx([v for _, v in expected])
    # The failed trial: its state and the last line of the traceback in its train.log.
    (failed,) = [r for r in rows if not r["rank"]]
    assert failed["state"] == "failed"
    last_line = (optuna_sweep / failed["run"] / "train.log").read_text().strip().splitlines()[-1]
    assert failed["note"] == f"failed: {last_line} (train.log)"
    assert "batch_size=0" in last_line
    assert f"run {failed['run']}: failed: {last_line}" in out
    assert "Optuna study 'segfw': 3 trials (" in out
    assert _is_png(tmp_path / "optuna_history.png")
    assert _is_png(tmp_path / "optuna_importances.png")
    assert not (optuna_sweep / "leaderboard.csv").exists()


def test_report_html_renders_in_headless_chromium(optuna_sweep, tmp_path):
    browser, sync_playwright = _chromium()
    assert main([str(optuna_sweep), "--output", str(tmp_path)]) == 0
    html = (tmp_path / "report.html").read_text()
    # The best run's worst cases, when training wrote them (per-image scoring).
    best = optuna_sweep / _ranking_by_metrics_json(optuna_sweep)[0][0]
    gallery = (best / "worst_cases" / "val.png").is_file()
    # Self-contained: every picture inlined (curves, history, importances, gallery), no script.
    assert re.findall(r'src="([^"]{0,22})', html) == ["data:image/png;base64,"] * (3 + gallery)
    assert "<script" not in html

    problems, requests = [], []
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=browser,
            args=[
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = chromium.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto((tmp_path / "report.html").as_uri())
            rows = page.locator("#leaderboard tbody tr")
            assert rows.count() == 3
            assert rows.first.locator("td").nth(2).inner_text() == "finished"
            assert page.locator("#leaderboard thead th").first.inner_text() == "#"
            assert page.locator("#per-class tbody tr").count() == len(CLASSES)
            widths = page.eval_on_selector_all("img", "images => images.map(i => i.naturalWidth)")
            assert len(widths) == 3 + gallery and min(widths) > 100
            text = page.locator("body").inner_text()
            if gallery:
                assert str(best / "per_image.csv") in text
            else:
                assert "no per-image scores (run evaluate.py on the best checkpoint)" in text
        finally:
            chromium.close()
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests


# ---- Bad input, on run dirs written here -----------------------------------------------------


def _write_run(
    path: Path,
    lr: float,
    curve: list[float],
    *,
    finished: bool = True,
    error: str | None = None,
    steps: int = 4,
    start: str = "2024-05-01 12:00:00",
) -> Path:
    """A run dir as train.py writes it: overrides, config, run info, CSV log, log and, when
    ``finished``, metrics.json with the best epoch's scores (scored again after training)."""
    (path / ".hydra").mkdir(parents=True)
    (path / "csv").mkdir()
    overrides = ["model.height=32", f"optimizer.lr={lr}"]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {"optimized_metric": "val/mIoU", "data": {"class_names": CLASSES}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    (path / "run_info.json").write_text(json.dumps({"parameters": {"total": 1_234_567}}))
    rows = [["epoch", "step", "train/loss", "val/mIoU"]]
    step = 0
    for epoch, value in enumerate(curve):
        for _ in range(steps):
            rows.append([epoch, step, 1 / (step + 1), ""])
            step += 1
        rows.append([epoch, step - 1, "", value])
    log = [f"[{start},000][segfw.models.builder][INFO] - backbone mobilenetv2"]
    if finished:
        best = max(curve)
        rows.append([len(curve), step, "", best])  # the best checkpoint, scored again
        metrics = {"val/mIoU": best, "test/mIoU": best - 0.01, "best_checkpoint": "x.ckpt"}
        metrics |= {f"val/IoU/{c}": best for c in CLASSES}
        (path / "metrics.json").write_text(json.dumps(metrics))
        log.append(f"[{start[:-5]}05:00,500][segfw][INFO] - metrics written to {path}")
    if error:
        log += [
            f"[{start[:-5]}01:30,000][segfw][ERROR] - this job failed: {error}",
            "Traceback (most recent call last):",
            '  File "segfw/commands/train.py", line 1, in train',
            f"ValueError: {error}",
        ]
    with (path / "csv" / "metrics.csv").open("w", newline="") as file:
        csv.writer(file, lineterminator="\n").writerows(rows)
    (path / "train.log").write_text("\n".join(log) + "\n")
    return path


def _age(path: Path, seconds: float) -> None:
    """Makes every file of a run look last written ``seconds`` ago."""
    then = time.time() - seconds
    for file in [path, *path.rglob("*")]:
        os.utime(file, (then, then))


def test_no_run_to_report_exits_1_with_one_message(tmp_path, capsys):
    code, out, err = _run_main(capsys, tmp_path / "missing")
    assert (code, out) == (1, "")
    assert (
        err
        == f"segfw.report: {tmp_path / 'missing'} is not a directory; pass a run dir or a sweep dir.\n"
    )

    (tmp_path / "empty" / "notes").mkdir(parents=True)
    code, out, err = _run_main(capsys, tmp_path / "empty")
    assert (code, out) == (1, "") and len(err.splitlines()) == 1
    assert "holds no run" in err and "Traceback" not in err

    # A dir of sweeps (logs/multiruns): the message names them.
    _write_run(tmp_path / "multiruns" / "2024-05-01_12-00-00" / "0", 1e-3, [0.1, 0.2])
    code, _, err = _run_main(capsys, tmp_path / "multiruns")
    assert code == 1 and len(err.splitlines()) == 1
    assert f"pass one of them ({tmp_path / 'multiruns' / '2024-05-01_12-00-00'})" in err


def test_runs_without_metrics_json_are_failed_running_or_stopped(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _write_run(sweep / "0", 1e-3, [0.30, 0.40])
    _write_run(sweep / "1", 3e-3, [0.35, 0.50])
    _write_run(sweep / "2", 1e-2, [0.20], finished=False, error="loss is NaN at step 7")
    _write_run(sweep / "3", 3e-2, [0.10, 0.15], finished=False)  # written just now
    _write_run(sweep / "4", 1e-1, [0.05], finished=False)
    _age(sweep / "4", 3 * 3600)  # nothing written for three hours: killed
    (sweep / ".submitit").mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")

    code, out, err = _run_main(capsys, sweep)
    assert code == 0, err
    rows = {r["run"]: r for r in _leaderboard(sweep)}
    assert [r["run"] for r in _leaderboard(sweep)] == ["1", "0", "2", "3", "4"]
    assert {k: (r["rank"], r["state"]) for k, r in rows.items()} == {
        "1": ("1", "finished"),
        "0": ("2", "finished"),
        "2": ("", "failed"),
        "3": ("", "running"),
        "4": ("", "stopped"),
    }
    assert rows["2"]["note"] == "failed: ValueError: loss is NaN at step 7 (train.log)"
    assert rows["3"]["note"] == "running: no metrics.json yet"
    assert rows["4"]["note"].startswith("stopped: no metrics.json, no error in train.log")
    # Epochs validated so far; a finished run's curve leaves out the best checkpoint's rescoring.
    assert [rows[k]["epochs"] for k in "01234"] == ["2", "2", "1", "2", "1"]
    assert float(rows["0"]["wall_s"]) == 300.5
    assert "3 running" not in out and "(2 finished, 1 failed, 1 running, 1 stopped)" in out
    for note in (rows["2"]["note"], rows["3"]["note"]):
        assert note in out
    # With a shorter staleness window the run written just now is still running.
    _age(sweep / "3", 120)
    assert main([str(sweep), "--stale-minutes", "1"]) == 0
    assert _leaderboard(sweep)[3]["state"] == "stopped"


def test_a_sweep_whose_runs_all_failed_says_why(tmp_path, capsys):
    for job in range(3):
        _write_run(tmp_path / str(job), 10.0**-job, [0.1], finished=False, error=f"boom {job}")
    code, out, err = _run_main(capsys, tmp_path)
    assert code == 0, err
    assert "(3 failed)" in out and "nothing is ranked" in out
    for job in range(3):
        assert f"- run {job}: failed: ValueError: boom {job} (train.log)" in out
    html = (tmp_path / "report.html").read_text()
    assert "No run has val/mIoU: nothing to show." in html
    assert html.count('<span class="state failed">') == 3


def test_a_metrics_csv_cut_short_by_a_kill(tmp_path, capsys):
    run = _write_run(tmp_path / "run", 1e-3, [0.1, 0.2, 0.3], finished=False)
    log = run / "csv" / "metrics.csv"
    # The kill came while the third epoch's validation row was being written: "2,11,,0.3" cut.
    log.write_text(log.read_text()[: -len("0.3\n")])
    code, out, err = _run_main(capsys, run)
    assert code == 0, err
    (row,) = _leaderboard(run)
    assert row["epochs"] == "2" and row["state"] == "running"
    assert "csv/metrics.csv: left out its last line, cut short" in out


def test_unreadable_files_become_notes(tmp_path, capsys):
    run = _write_run(tmp_path / "0", 1e-3, [0.1, 0.2])
    _write_run(tmp_path / "1", 3e-3, [0.1, 0.3])
    (run / "metrics.json").write_text('{"val/mIoU": 0.')  # a write cut short
    (run / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    code, out, err = _run_main(capsys, tmp_path)
    assert code == 0, err
    assert "run 0: metrics.json unreadable, left out" in out
    assert "run 0: .hydra/overrides.yaml unreadable, left out" in out
    assert [r["run"] for r in _leaderboard(tmp_path) if r["rank"]] == ["1"]


def test_the_best_runs_worst_cases_are_embedded(tmp_path, capsys):
    from PIL import Image

    def gallery(path: Path, color: str) -> str:
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 10), color).save(path)
        return base64.b64encode(path.read_bytes()).decode()

    best = _write_run(tmp_path / "0", 1e-3, [0.1, 0.5])
    other = _write_run(tmp_path / "1", 1e-2, [0.1, 0.2])
    shown_elsewhere = gallery(other / "worst_cases" / "val.png", "red")
    assert _run_main(capsys, tmp_path)[0] == 0
    html = (tmp_path / "report.html").read_text()
    assert "no per-image scores (run evaluate.py on the best checkpoint)" in html
    assert shown_elsewhere not in html

    test_split = gallery(best / "worst_cases" / "test.png", "blue")
    assert _run_main(capsys, tmp_path)[0] == 0
    html = (tmp_path / "report.html").read_text()
    assert test_split in html and "images of the test split" in html
    assert "per_image.csv" not in html

    val_split = gallery(best / "worst_cases" / "val.png", "green")
    (best / "per_image.csv").write_text("split,index,path,pixel_acc,mIoU\n")
    assert _run_main(capsys, tmp_path)[0] == 0
    html = (tmp_path / "report.html").read_text()
    assert val_split in html and test_split not in html
    assert f"<code>{best / 'per_image.csv'}</code>" in html
    assert "no per-image scores" not in html


def _study(path: Path, trials: list[tuple[float, str, float | None]]) -> None:
    """An Optuna study in ``path`` as the sweeper leaves it: (lr, loss, value or None: failed)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="segfw", storage=open_storage(path), direction="maximize"
    )
    distributions = {
        "optimizer.lr": FloatDistribution(1e-4, 1.0, log=True),
        "loss": CategoricalDistribution(("ce", "dice", "focal")),
    }
    for lr, loss, value in trials:
        state = TrialState.COMPLETE if value is not None else TrialState.FAIL
        params = {"optimizer.lr": lr, "loss": loss}
        study.add_trial(
            create_trial(state=state, value=value, params=params, distributions=distributions)
        )


def test_study_plots_say_why_they_are_missing(tmp_path, capsys, monkeypatch):
    _write_run(tmp_path / "0", 1e-3, [0.1, 0.2])
    _write_run(tmp_path / "1", 1e-2, [0.1], finished=False, error="boom")
    _study(tmp_path / JOURNAL_FILE, [(1e-3, "ce", 0.2), (1e-2, "dice", None)])
    code, out, _ = _run_main(capsys, tmp_path)
    assert code == 0
    assert "Optuna study 'segfw': 2 trials (1 complete, 1 fail)" in out
    assert "parameter importances: need 2 completed trials, the study has 1" in out
    assert (tmp_path / "optuna_history.png").is_file()
    assert not (tmp_path / "optuna_importances.png").exists()

    (tmp_path / "optuna_history.png").unlink()
    monkeypatch.setitem(sys.modules, "optuna", None)  # as without the sweep extra
    code, out, _ = _run_main(capsys, tmp_path)
    assert code == 0
    assert (
        f"{JOURNAL_FILE}: no study plots, optuna is not installed (pip install 'segfw[sweep]')"
        in out
    )
    assert not (tmp_path / "optuna_history.png").exists()
    assert "<h2>Optuna study</h2>" in (tmp_path / "report.html").read_text()


def test_importances_need_scikit_learn(tmp_path, capsys, monkeypatch):
    for job, lr in enumerate((1e-3, 1e-2, 1e-1)):
        _write_run(tmp_path / str(job), lr, [0.1, lr])
    _study(tmp_path / JOURNAL_FILE, [(1e-3, "ce", 0.1), (1e-2, "dice", 0.2), (1e-1, "ce", 0.3)])
    monkeypatch.setitem(sys.modules, "sklearn", None)
    code, out, _ = _run_main(capsys, tmp_path)
    assert code == 0
    assert "parameter importances: need scikit-learn (pip install 'segfw[sweep]')" in out
    assert (tmp_path / "optuna_history.png").is_file()


def test_twenty_runs_are_reported_in_under_ten_seconds(tmp_path):
    """A 20-trial Optuna sweep of 50 epochs each, from a fresh interpreter: imports, the study's
    plots (a random forest for the importances) and the HTML page included."""
    trials = []
    for job in range(20):
        lr = 10 ** (-4 + job / 5)
        curve = [0.5 * (1 - 0.9**e) * (1 - abs(job - 12) / 20) for e in range(1, 51)]
        _write_run(tmp_path / str(job), lr, curve, steps=20)
        trials.append((lr, ("ce", "dice", "focal")[job % 3], max(curve)))
    _study(tmp_path / JOURNAL_FILE, trials)
    start = time.perf_counter()
    result = _report(tmp_path)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    print(f"report on 20 runs: {seconds:.1f} s")
    assert seconds < 10
    rows = _leaderboard(tmp_path)
    assert [r["run"] for r in rows[:3]] == ["12", "11", "13"]
    assert {r["epochs"] for r in rows} == {"50"}
    assert _is_png(tmp_path / "optuna_importances.png")


# ---- The sweep extra --------------------------------------------------------------------------

# Installed as sitecustomize: the sweep extra's packages cannot be imported, as when it is not
# installed (the finder raises what Python raises for a missing module).
NOT_INSTALLED = textwrap.dedent(
    """
    import sys

    MISSING = ("optuna", "submitit", "hydra_plugins.hydra_submitit_launcher")

    class NotInstalled:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in MISSING):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled)
    """
)
# In an interpreter where they cannot be imported: every module of segfw but the Optuna sweep's
# and pruning's (only the sweeper and a sweep's trials import them), then train.py as `python train.py -m <option>` runs it, for
# each option given; prints how each run of train.py exited.
WITHOUT_THE_EXTRA = textwrap.dedent(
    """
    import importlib, json, pkgutil, runpy, sys
    import segfw

    OPTUNA_MODULES = ("segfw.commands.sweeps", "segfw.training.pruning")

    for module in pkgutil.walk_packages(segfw.__path__, "segfw."):
        if module.name not in OPTUNA_MODULES and not module.name.endswith(".__main__"):
            importlib.import_module(module.name)
    sweep_dir, options = sys.argv[1], sys.argv[2:]
    exits = {}
    for option in options:
        sys.argv = ["train.py", "-m", option, f"hydra.sweep.dir={sweep_dir}"]
        try:
            runpy.run_path("train.py", run_name="__main__")
        except SystemExit as stop:
            exits[option] = stop.code
    print(json.dumps(exits))
    """
)


def test_without_the_sweep_extra(tmp_path):
    """Nothing in core imports the extra's packages, and the options that need them stop train.py
    at once with the install command (Python prints that message and exits with 1)."""
    (tmp_path / "sitecustomize.py").write_text(NOT_INSTALLED)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    options = [
        "hparams_search=optuna",
        "hydra/launcher=submitit_local",
        "hydra/launcher=submitit_slurm",
    ]
    command = [sys.executable, "-c", WITHOUT_THE_EXTRA, str(tmp_path / "sweep"), *options]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    exits = json.loads(result.stdout.splitlines()[-1])
    assert set(exits) == set(options)
    for option, message in exits.items():
        assert isinstance(message, str) and "\n" not in message
        assert message.startswith(f"{option} needs the sweep extra (")
        assert message.endswith(
            "pip install -e '.[sweep]' in a clone, or pip install 'segfw[sweep]'"
        )
    assert not (tmp_path / "sweep").exists()


# ---- Issue 19 item 8: submitit jobs, short runs, evaluate.py dirs, long legends and headers ----


def _submitit_job(run: Path, job_id: str, *, result=None, stderr: str | None = None) -> Path:
    """Makes ``run`` a job of hydra-submitit-launcher: Hydra's job id in .hydra/hydra.yaml, and
    submitit's files in <sweep dir>/.submitit/<job id>/ as submitit writes them."""
    import pickle

    hydra = {"hydra": {"job": {"id": job_id, "num": int(run.name)}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    folder = run.parent / ".submitit" / job_id
    folder.mkdir(parents=True)
    (folder / f"{job_id}_submitted.pkl").write_bytes(b"not read")
    if result is not None:
        (folder / f"{job_id}_0_result.pkl").write_bytes(pickle.dumps(result))
    if stderr is not None:
        (folder / f"{job_id}_0_log.err").write_text(stderr)
    return folder


def test_submitit_jobs_that_died_without_a_word_in_train_log(tmp_path, capsys):
    """Jobs killed or crashed outside Python's logging: their train.log ends in an INFO record,
    and their files were written just now, so they looked running (then stopped, for no reason)."""
    _write_run(tmp_path / "0", 1e-3, [0.3, 0.4])
    traceback = "Traceback (most recent call last):\n  File ...\nRuntimeError: CUDA error: an illegal memory access was encountered\n"
    for job in "1234":
        _write_run(tmp_path / job, 1e-2, [0.2], finished=False)
    _submitit_job(tmp_path / "1", "4242_1", result=("error", traceback))
    starting = "submitit INFO (2024-05-01 12:00:00,000) - Starting with JobEnvironment(...)\n"
    cancelled = "slurmstepd: error: *** JOB 4243 ON node7 CANCELLED AT 2024-05-01T14:00:00 DUE TO TIME LIMIT ***"
    _submitit_job(tmp_path / "2", "4242_2", stderr=starting + cancelled + "\n")
    oom = "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=4244.0. Some of your processes may have been killed by the cgroup out-of-memory handler."
    _submitit_job(tmp_path / "3", "4242_3", stderr=starting + oom + "\n")
    # A job still going: nothing but submitit's start in its stderr, no result.
    _submitit_job(tmp_path / "4", "4242_4", stderr=starting)
    # A success result is an object (Hydra's JobReturn): not unpickled, nothing said.
    (tmp_path / ".submitit" / "4242_4" / "4242_4_0_result.pkl").write_bytes(
        b"\x80\x04\x95\x1e\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94."
    )

    code, out, err = _run_main(capsys, tmp_path)
    assert code == 0, err
    rows = {r["run"]: r for r in _leaderboard(tmp_path)}
    assert {job: row["state"] for job, row in rows.items()} == {
        "0": "finished",
        "1": "failed",
        "2": "stopped",
        "3": "failed",
        "4": "running",
    }
    result = Path(".submitit", "4242_1", "4242_1_0_result.pkl")
    assert rows["1"]["note"] == (
        f"failed: RuntimeError: CUDA error: an illegal memory access was encountered ({result})"
    )
    stderr = Path(".submitit", "4242_2", "4242_2_0_log.err")
    assert rows["2"]["note"] == f"stopped: {cancelled} ({stderr})"
    assert rows["3"]["note"] == f"failed: {oom} ({Path('.submitit', '4242_3', '4242_3_0_log.err')})"
    assert rows["4"]["note"] == "running: no metrics.json yet"
    assert "(1 finished, 2 failed, 1 stopped, 1 running)" in out


def test_epochs_leave_out_the_final_scoring_of_a_short_run(tmp_path, capsys):
    """An epoch shorter than log_every_n_steps logs no train/loss row: the rows of the best
    checkpoint's scoring after training (val, then test, at the final epoch counter) were taken
    for one more epoch (3 for 2)."""
    finished = _write_run(tmp_path / "0", 1e-3, [0.1, 0.2], steps=0)
    # Killed after the scoring's val and test rows, before metrics.json: its test row tells.
    unfinished = _write_run(tmp_path / "1", 1e-2, [0.1, 0.3, 0.25], steps=0, finished=False)
    with (unfinished / "csv" / "metrics.csv").open("a") as file:
        file.write("3,3,,0.3\n3,3,,\n")
    header = ["epoch", "step", "train/loss", "val/mIoU", "test/mIoU"]
    for run in (finished, unfinished):
        path = run / "csv" / "metrics.csv"
        rows = list(csv.reader(path.read_text().splitlines()))[1:]
        rows = [row + [""] * (4 - len(row)) + [""] for row in rows]
        if run is unfinished:
            rows[-1][4] = "0.28"
        with path.open("w", newline="") as file:
            csv.writer(file, lineterminator="\n").writerows([header, *rows])
    code, _, err = _run_main(capsys, tmp_path)
    assert code == 0, err
    rows = {r["run"]: r for r in _leaderboard(tmp_path)}
    assert (rows["0"]["epochs"], rows["1"]["epochs"]) == ("2", "3")


def test_evaluate_dirs_are_listed_apart_not_ranked(tmp_path, capsys):
    """``segfw.report logs/runs``: evaluate.py's dirs score a checkpoint; they are no runs to
    rank (this one's val/mIoU would have come first), and predict.py's are no runs at all."""
    _write_run(tmp_path / "2024-05-01_12-00-00", 1e-3, [0.3, 0.4])
    _write_run(tmp_path / "2024-05-01_13-00-00", 1e-2, [0.3, 0.5])
    evaluation = tmp_path / "2024-05-01_14-00-00"
    (evaluation / ".hydra").mkdir(parents=True)
    (evaluation / ".hydra" / "overrides.yaml").write_text("- ckpt_path=best.ckpt\n- split=val\n")
    metrics = {"val/mIoU": 0.9, "checkpoint": "logs/runs/x/checkpoints/best.ckpt"}
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    (evaluation / "evaluate.log").write_text(
        "[2024-05-01 14:00:00,000][segfw][INFO] - scoring\n"
        "[2024-05-01 14:00:30,000][segfw][INFO] - metrics written\n"
    )
    prediction = tmp_path / "2024-05-01_15-00-00"
    (prediction / ".hydra").mkdir(parents=True)
    (prediction / "predict.log").write_text("")

    code, out, err = _run_main(capsys, tmp_path)
    assert code == 0, err
    rows = _leaderboard(tmp_path)
    assert [(r["rank"], r["run"]) for r in rows] == [
        ("1", "2024-05-01_13-00-00"),
        ("2", "2024-05-01_12-00-00"),
    ]
    assert "2 runs (2 finished) and 1 evaluation (not ranked), ranked by val/mIoU" in out
    (line,) = [line for line in out.splitlines() if line.startswith("2024-05-01_14-00-00")]
    assert line.split() == ["2024-05-01_14-00-00", "0.9000", "-", "30", "s", metrics["checkpoint"]]
    assert "not run dirs, skipped: 2024-05-01_15-00-00 (predict.py)" in out
    html = (tmp_path / "report.html").read_text()
    assert html.count("<tr><td>2024-05-01_14-00-00</td>") == 1
    assert 'id="evaluations"' in html
    assert (
        "| 2024-05-01_14-00-00 | 0.9000 | - | 30 s |" in (tmp_path / "leaderboard.md").read_text()
    )


LONG_OVERRIDES = [
    "model.decoder_channels=[256,128,64,32,16]",
    "data.augment.scale_range=[0.5,2.0]",
    "trainer.gradient_clip_val=1.5",
    "scheduler.warmup_epochs=5",
    "loss=dice_ce",
]


def _long_sweep(root: Path) -> Path:
    for job, lr in enumerate((1e-3, 3e-3, 1e-2)):
        run = _write_run(root / str(job), lr, [0.1, 0.1 + lr])
        overrides = [f"optimizer.lr={lr}", *(f"{o}{job}" for o in LONG_OVERRIDES)]
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return root


def test_long_legend_entries_wrap_inside_the_figure(tmp_path):
    """Legend entries were cut at 80 characters ("...") and the legend could stick out of the
    saved figure; they wrap now, in full, and the file is saved tight around everything."""
    import matplotlib

    matplotlib.use("Agg")
    from segfw.report import figures
    from segfw.report.leaderboard import Leaderboard
    from segfw.report.sweep import read_sweep

    board = Leaderboard.of(read_sweep(_long_sweep(tmp_path)))
    figure = figures.curves_figure(board)
    (legend,) = figure.legends
    texts = [text.get_text() for text in legend.get_texts()]
    for job, text in enumerate(texts):
        assert "..." not in text
        assert all(len(line) <= figures.LABEL_CHARACTERS for line in text.splitlines())
        flat = text.replace("\n", " ")
        assert all(f"{o}{job}" in flat for o in LONG_OVERRIDES), text
    figure.draw_without_rendering()  # lays the figure out
    box, frame = legend.get_window_extent(), figure.bbox
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
    figures.plot_curves(board, tmp_path / "curves.png")
    assert _is_png(tmp_path / "curves.png")


def _chromium():
    """Chromium's path and Playwright's sync API; skips (fails on CI) without them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if browser is None or sync_playwright is None:
        missing = "chromium (apt-get install chromium)" if browser is None else "playwright"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing: .ci/run installs both")
        pytest.skip(f"{missing} is not installed")
    return browser, sync_playwright


def test_long_headers_break_inside_the_page(tmp_path, capsys):
    """A long metric name as a column header (and long overrides) made the leaderboard wider than
    the page: its right columns were cut off in a narrow window or a printout."""
    browser, sync_playwright = _chromium()
    metric = "val/IoU/a_rather_long_class_name_of_some_dataset"
    for run in _long_sweep(tmp_path).iterdir():
        scores = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**scores, metric: scores["val/mIoU"]}))
    assert _run_main(capsys, tmp_path, "--metric", metric)[0] == 0
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser, args=["--disable-gpu"])
        try:
            page = chromium.new_page(viewport={"width": 720, "height": 900})
            page.goto((tmp_path / "report.html").as_uri())
            body = page.eval_on_selector("body", "b => b.getBoundingClientRect().right")
            table = page.eval_on_selector("#leaderboard", "t => t.getBoundingClientRect().right")
            assert table <= body + 1
            overflowing = page.eval_on_selector_all(
                "#leaderboard th, #leaderboard td",
                "cells => cells.filter(c => c.scrollWidth > c.clientWidth).map(c => c.textContent)",
            )
            assert overflowing == []
            header = page.locator("#leaderboard thead th").nth(3)
            assert header.inner_text().replace("\n", "") == metric
        finally:
            chromium.close()
