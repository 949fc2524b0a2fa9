"""The Trainer-flag matrix: precision, gradient accumulation, step logging and mid-epoch validation
through the real training command, default callbacks and loggers on, a few steps each. Every
combination finishes with the expected optimizer steps, checkpoints, metrics logged at the
expected steps and a worst-case gallery of the predictions it scored, or is refused in one line.

The default suite runs each value of each flag once (three runs); a pairwise set (every two values
of two flags meet in some run) and the full product run under ``-m slow``. (DDP and requeue combinations: tests/test_ddp.py and
tests/test_scaling.py.)"""

from __future__ import annotations

import csv
import itertools
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

import segfw.commands.evaluate as evaluate_command
from helpers import TINY, Regression, compose_config
from segfw.commands.train import train
from segfw.errors import ConfigError
from segfw.training import requeue
from segfw.training.callbacks import ProgressBar
from segfw.training.metrics import PerImageCounts, per_image_scores

BATCHES = 4  # training batches per epoch
# The tiny settings with segfw's default callbacks all on (TINY turns off the progress bar and the
# model summary, and the bar reads the logging interval too).
SMALL = [o for o in TINY if not o.startswith("~callbacks")] + [
    "model.height=32",
    "model.width=32",
    "model.decoder_channels=[16,16,16,16,16]",
    "data.batch_size=2",
    f"data.sizes.train={2 * BATCHES}",
    "data.sizes.val=4",
    "data.sizes.test=4",
    "worst_cases=4",
]
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
ACCUMULATE = (1, 2)
LOG_EVERY = (0, 1, 50)
VAL_CHECK = (0.5, 3)  # twice per epoch, or after every third batch (once in 4 batches)

# The default suite: every value of every flag in some run (a run takes ~10 s on 2 CPU cores).
EACH_VALUE = [
    ("32-true", 2, 1, 3),
    ("bf16-mixed", 1, 50, 0.5),
    ("bf16-true", 2, 0, 0.5),
]
# precision x log_every_n_steps in full (3 x 3); accumulation and val_check_interval spread so
# that each of their values meets every value of the other flags at least once.
PAIRWISE = [
    ("32-true", 1, 0, 0.5),
    ("32-true", 2, 1, 3),
    ("32-true", 2, 50, 0.5),
    ("bf16-mixed", 2, 0, 3),
    ("bf16-mixed", 1, 1, 0.5),
    ("bf16-mixed", 1, 50, 3),
    ("bf16-true", 2, 0, 0.5),
    ("bf16-true", 1, 1, 3),
    ("bf16-true", 2, 50, 3),
]
FULL = [
    combination
    for combination in itertools.product(PRECISIONS, ACCUMULATE, LOG_EVERY, VAL_CHECK)
    if combination not in EACH_VALUE
]


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> dict[str, Any]:
    """Trains with ``overrides``; returns the metrics, the run dir and the gallery cases drawn."""
    drawn: dict[str, list[dict[str, Any]]] = {}
    gallery = evaluate_command.worst_case_gallery

    def recording_gallery(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        cases = gallery(*args, **kwargs)
        drawn[args[2]] = cases
        return cases

    monkeypatch.setattr(evaluate_command, "worst_case_gallery", recording_gallery)
    output_dir = tmp_path / "run"
    cfg = compose_config("train", SMALL + list(overrides), output_dir)
    OmegaConf.resolve(cfg)
    return {"metrics": train(cfg), "dir": output_dir, "drawn": drawn}


def _rows(run_dir: Path, key: str) -> list[dict[str, str]]:
    """The CSV logger's rows that hold ``key``."""
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return [row for row in csv.DictReader(file) if row.get(key)]


def _assert_gallery_shows_the_scored_predictions(drawn: dict[str, list[dict[str, Any]]]) -> None:
    """Each gallery row's prediction scores the mIoU the split's scoring gave that image."""
    assert set(drawn) == {"val", "test"}
    for stage, cases in drawn.items():
        assert cases, stage
        for case in cases:
            counts = PerImageCounts(4, 255)
            counts.update(
                torch.from_numpy(case["prediction"])[None],
                torch.from_numpy(case["target"])[None],
                torch.tensor([case["index"]]),
            )
            shown = per_image_scores(counts.compute()[1])["mIoU"].item()
            assert shown == pytest.approx(case["mIoU"], abs=1e-12), (stage, case["index"])


def _check(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    precision: str,
    accumulate: int,
    log_every: int,
    val_check: float,
) -> None:
    run = _run(
        tmp_path,
        monkeypatch,
        f"trainer.precision={precision}",
        f"trainer.accumulate_grad_batches={accumulate}",
        f"trainer.log_every_n_steps={log_every}",
        f"trainer.val_check_interval={val_check}",
    )
    metrics, run_dir = run["metrics"], run["dir"]
    steps = BATCHES // accumulate

    # last.ckpt is written at each validation: after batch 4 with 0.5, after batch 3 with 3.
    last = run_dir / "checkpoints" / "last.ckpt"
    validated_after = BATCHES if val_check == 0.5 else 3
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == validated_after // accumulate
    assert Path(metrics["best_checkpoint"]).is_file()
    for key in ("val/mIoU", "val/loss", "test/mIoU", "test/loss"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["val/mIoU"] <= 1.0

    # Step metrics: at every log_every_n_steps-th optimizer step, none with 0 (step logging off)
    # or an interval longer than the run.
    logged = [int(row["step"]) for row in _rows(run_dir, "train/loss")]
    expected = [s - 1 for s in range(1, steps + 1) if log_every and s % log_every == 0]
    assert logged == expected
    # (Lightning's learning-rate monitor logs at each batch of an accumulating step: a set.)
    assert sorted({int(row["step"]) for row in _rows(run_dir, "lr-AdamW/pg1")}) == expected
    # Epoch metrics, whatever the step logging: each validation during training (after batches
    # 2 and 4 with 0.5; after batch 3 with 3), then the best checkpoint's final scoring.
    validations = _rows(run_dir, "val/mIoU")
    assert len(validations) - 1 == (2 if val_check == 0.5 else 1)
    assert int(validations[-1]["step"]) == steps  # the final scoring: at the run's last step
    assert len(_rows(run_dir, "test/mIoU")) == 1

    _assert_gallery_shows_the_scored_predictions(run["drawn"])


@pytest.mark.parametrize(("precision", "accumulate", "log_every", "val_check"), EACH_VALUE)
def test_each_flag_value_trains_to_the_expected_steps_files_and_logs(
    tmp_path, monkeypatch, precision, accumulate, log_every, val_check
):
    _check(tmp_path, monkeypatch, precision, accumulate, log_every, val_check)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("precision", "accumulate", "log_every", "val_check"),
    [c for c in PAIRWISE if c not in EACH_VALUE],
)
def test_flag_pairs_train_too(tmp_path, monkeypatch, precision, accumulate, log_every, val_check):
    _check(tmp_path, monkeypatch, precision, accumulate, log_every, val_check)


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "accumulate", "log_every", "val_check"), FULL)
def test_every_other_flag_combination_trains_too(
    tmp_path, monkeypatch, precision, accumulate, log_every, val_check
):
    _check(tmp_path, monkeypatch, precision, accumulate, log_every, val_check)


@pytest.mark.parametrize("accumulate", ACCUMULATE)
def test_float16_weights_are_refused_on_the_cpu_in_one_line(tmp_path, monkeypatch, accumulate):
    with pytest.raises(ConfigError) as refused:
        _run(
            tmp_path,
            monkeypatch,
            "trainer.precision=16-true",
            f"trainer.accumulate_grad_batches={accumulate}",
        )
    message = str(refused.value)
    assert "\n" not in message
    assert "trainer.precision=16-true" in message
    assert "bf16-mixed" in message and "32-true" in message


def test_gallery_without_a_best_checkpoint_shows_the_scored_predictions(tmp_path, monkeypatch):
    # No checkpoint callback: the weights in memory are scored by a module built for it.
    run = _run(
        tmp_path,
        monkeypatch,
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "+trainer.enable_checkpointing=false",
    )
    assert run["metrics"]["best_checkpoint"] == ""
    _assert_gallery_shows_the_scored_predictions(run["drawn"])


def _small_trainer(tmp_path: Path, callbacks: list[pl.Callback], **options: Any) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        log_every_n_steps=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        **options,
    )


def test_progress_bar_with_step_logging_off_reads_metrics_once_per_epoch(tmp_path, monkeypatch):
    reads = []
    original = pl.Trainer.progress_bar_metrics
    monkeypatch.setattr(
        pl.Trainer, "progress_bar_metrics", property(lambda t: reads.append(1) or original.fget(t))
    )
    _small_trainer(tmp_path, [ProgressBar()], max_epochs=2).fit(Regression())
    assert 2 <= len(reads) <= 2 * 2  # 12 steps an epoch; read at its start (and its end)


class _Signal(pl.Callback):
    """Sends the SLURM end warning to this process at the end of training batch ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.at:
            os.kill(os.getpid(), signal.SIGUSR1)


class _OnSlurm:
    """Lightning's SLURM environment, detected."""

    @staticmethod
    def detect() -> bool:
        return True


def test_requeue_with_step_logging_off_saves_at_the_signalled_step(tmp_path, monkeypatch):
    monkeypatch.setattr(requeue, "SLURMEnvironment", _OnSlurm)
    monkeypatch.setattr(requeue, "_ask_for_requeue", lambda path: None)
    trainer = _small_trainer(tmp_path, [_Signal(at=2), requeue.Requeue()], max_epochs=1)
    with pytest.raises(requeue.Requeued):
        trainer.fit(Regression())
    saved = torch.load(tmp_path / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 3  # the signalled step, not a log interval later
