"""Experiment tracking with the real back-ends, offline: what a run leaves in TensorBoard's event
files, in the wandb offline run, in the CSV logger and in the run dir."""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image
from pytorch_lightning.callbacks import RichProgressBar
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from helpers import CONF, Regression, compose_config, tiny
from segfw.commands.config import build_datamodule, build_logger, build_module
from segfw.commands.train import train
from segfw.errors import ConfigError
from segfw.training.callbacks import ProgressBar
from segfw.training.loggers import closing_wandb_run, wandb_logger
from segfw.training.module import SegmentationModule
from segfw.visualize import GAP, colorize

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 4  # of the 16 validation images, spread evenly:
INDICES = (0, 5, 10, 15)
EPOCHS = 2
CLASSES = ("background", "circle", "triangle", "square")
VAL_SCALARS = ("val/loss", "val/mIoU", "val/dice", "val/pixel_acc") + tuple(
    f"val/IoU/{name}" for name in CLASSES
)


@pytest.fixture(scope="module")
def wandb_env(tmp_path_factory):
    """wandb without credentials, its settings, caches and staging area in a temporary dir."""
    home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_PROJECT"):
            patch.delenv(name, raising=False)
        patch.setenv("NETRC", str(home / "netrc"))  # absent: no stored login
        for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR"):
            patch.setenv(name, str(home / name.lower()))
        yield home


@dataclass
class Run:
    cfg: DictConfig
    metrics: dict[str, Any]
    dir: Path
    warnings: list[str]


@pytest.fixture(scope="module")
def run(wandb_env, tmp_path_factory) -> Run:
    """One tiny training run logging to CSV, TensorBoard and wandb (offline: no credentials)."""
    output_dir = tmp_path_factory.mktemp("run")
    overrides = [
        "logger=[csv,tensorboard,wandb]",
        f"trainer.max_epochs={EPOCHS}",
        f"callbacks.validation_samples.num_samples={SAMPLES}",
        "logger.wandb.tags=[test]",
    ]
    cfg = compose_config("train", tiny(overrides), output_dir)
    OmegaConf.resolve(cfg)
    messages = _Messages()
    logging.getLogger("segfw").addHandler(messages)
    try:
        metrics = train(cfg)
    finally:
        logging.getLogger("segfw").removeHandler(messages)
    return Run(cfg, metrics, output_dir, messages.texts)


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


@pytest.fixture(scope="module")
def predicted(run) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The drawn samples' images and masks, and the predictions of the weights the last epoch
    ended with (``last.ckpt``, saved after the pictures of that epoch)."""
    module = SegmentationModule.load_from_checkpoint(
        run.dir / "checkpoints" / "last.ckpt", map_location="cpu"
    ).eval()
    dataset = build_datamodule(run.cfg.data, run.cfg.model).dataset("val")
    items = [dataset[i] for i in INDICES]
    images = torch.stack([item["image"] for item in items])
    masks = torch.stack([item["mask"] for item in items])
    with torch.no_grad():
        predictions = module(images).argmax(1).to(torch.uint8)
    return images, masks, predictions


def test_without_credentials_wandb_runs_offline_says_so_and_is_finished(run):
    import wandb

    assert any(
        "OFFLINE" in m and "no W&B credentials" in m and "wandb sync" in m for m in run.warnings
    )
    run_id = (run.dir / "wandb_id").read_text().strip()
    (offline,) = (run.dir / "wandb").glob("offline-run-*")
    assert offline.name.endswith(f"-{run_id}")
    # Finished by the train task, so that the next job of a sweep starts a run of its own.
    assert wandb.run is None
    exits = [r.exit.exit_code for r in _wandb_records(run.dir) if r.HasField("exit")]
    assert exits == [0]


def test_tensorboard_holds_the_step_and_epoch_scalars(run):
    events = _tensorboard(run.dir)
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "lr-AdamW/pg1", *VAL_SCALARS} <= scalars
    steps_per_epoch = 32 // 8
    assert len(events.Scalars("train/loss")) == EPOCHS * steps_per_epoch  # log_every_n_steps=1
    # One point per epoch from fit, and one from the final scoring of the best checkpoint.
    for tag in VAL_SCALARS:
        assert len(events.Scalars(tag)) == EPOCHS + 1, tag
    assert events.Scalars("val/mIoU")[-1].value == pytest.approx(run.metrics["val/mIoU"])


def test_tensorboard_shows_each_epochs_samples_and_confusion_matrix(run):
    events = _tensorboard(run.dir)
    images = events.Tags()["images"]
    per_epoch = [
        "val/confusion_matrix",
        "val/samples/00",
        "val/samples/05",
        "val/samples/10",
        "val/samples/15",
    ]
    assert sorted(images) == [*per_epoch, "val/worst_cases"]
    scalar_steps = [e.step for e in events.Scalars("val/mIoU")[:EPOCHS]]
    for tag in per_epoch:
        assert [e.step for e in events.Images(tag)] == scalar_steps, tag
    figure = _decode(events.Images("val/confusion_matrix")[-1].encoded_image_string)
    assert figure.shape[0] > 100 and figure.shape[1] > 100


def test_tensorboard_prediction_panels_are_the_models_predictions(run, predicted):
    events = _tensorboard(run.dir)
    images, masks, predictions = predicted
    palette = np.array(run.cfg.data.palette, dtype=np.uint8)
    for k, index in enumerate(INDICES):
        strip = _decode(events.Images(f"val/samples/{index:02d}")[-1].encoded_image_string)
        width = images.shape[-1]
        image, truth, prediction = (
            strip[:, i * (width + GAP) : i * (width + GAP) + width] for i in range(3)
        )
        np.testing.assert_array_equal(image, images[k].permute(1, 2, 0).numpy())
        np.testing.assert_array_equal(truth, colorize(masks[k].numpy(), palette))
        np.testing.assert_array_equal(prediction, colorize(predictions[k].numpy(), palette))
    # The check means something only if prediction and ground truth differ.
    assert not torch.equal(predictions, masks)


def test_tensorboard_holds_the_config_hparams_and_best_checkpoint(run):
    events = _tensorboard(run.dir)
    assert {"config/text_summary", "best_checkpoint/text_summary"} <= set(events.Tags()["tensors"])
    config_text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "optimizer:" in config_text and "commit:" in config_text
    best = events.Tensors("best_checkpoint/text_summary")[0].tensor_proto.string_val[0].decode()
    assert run.metrics["best_checkpoint"] in best

    content = events.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["config.model.name"].string_value == "unet"
    assert hparams["config.optimizer.lr"].number_value == pytest.approx(run.cfg.optimizer.lr)
    assert hparams["run.parameters.total"].number_value > 1e6
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"val/mIoU", "val/loss"}


def test_wandb_offline_run_holds_config_history_and_summary(run):
    records = _wandb_records(run.dir)
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.HasField("config")
        for item in r.config.update
    }
    assert config["config"]["model"]["name"] == "unet"
    assert config["config"]["optimizer"]["lr"] == pytest.approx(run.cfg.optimizer.lr)
    assert set(config["run"]) == {"git", "versions", "parameters", "command"}
    assert config["run"]["versions"]["torch"] == torch.__version__.split("+")[0]

    rows = _history(records)
    assert sum("train/loss" in row for row in rows) == EPOCHS * 4
    assert sum("lr-AdamW/pg1" in row for row in rows) == EPOCHS * 4
    for key in VAL_SCALARS:
        assert sum(key in row for row in rows) == EPOCHS + 1, key
    run_record = next(r.run for r in records if r.HasField("run"))
    assert run_record.project == "segfw" and list(run_record.tags) == ["test"]

    summary = {
        "/".join(item.nested_key) or item.key: json.loads(item.value_json)
        for r in records
        if r.HasField("summary")
        for item in r.summary.update
    }
    assert summary["best_checkpoint"] == run.metrics["best_checkpoint"]
    assert summary["best_checkpoint_monitor"] == "val/mIoU"


def test_wandb_masks_are_the_ground_truth_and_the_models_predictions(run, predicted):
    records = _wandb_records(run.dir)
    rows = [row for row in _history(records) if "val/samples" in row]
    assert len(rows) == EPOCHS
    assert all("val/confusion_matrix" in row for row in rows)
    last = rows[-1]["val/samples"]
    assert last["captions"] == [f"#{i} shapes/val/{i:06d}" for i in INDICES]
    files = _offline_dir(run.dir) / "files"
    images, masks, predictions = predicted
    for k, (name, both) in enumerate(zip(last["filenames"], last["all_masks"], strict=True)):
        image = np.asarray(Image.open(files / name).convert("RGB"))
        np.testing.assert_array_equal(image, images[k].permute(1, 2, 0).numpy())
        truth = np.asarray(Image.open(files / both["ground_truth"]["path"]))
        prediction = np.asarray(Image.open(files / both["prediction"]["path"]))
        np.testing.assert_array_equal(truth, masks[k].numpy())
        np.testing.assert_array_equal(prediction, predictions[k].numpy())
    assert not torch.equal(predictions, masks)


def test_worst_cases_go_to_tensorboard_and_to_a_wandb_table_in_per_image_order(run):
    # per_image.csv: the final scoring's own score of every validation image.
    with open(run.dir / "per_image.csv", newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["split"] == "val" and row["mIoU"]]
    expected = sorted(rows, key=lambda row: float(row["mIoU"]))[: run.cfg.worst_cases]
    # TensorBoard: the gallery, once, at the end of training.
    (gallery,) = _tensorboard(run.dir).Images("val/worst_cases")
    assert _decode(gallery.encoded_image_string).shape[0] > 64 * len(expected)
    # wandb: a Table, one row per case, lowest first, with the masks under the class names.
    (logged,) = [
        row["val/worst_cases"]
        for row in _history(_wandb_records(run.dir))
        if "val/worst_cases" in row
    ]
    table = json.loads((_offline_dir(run.dir) / "files" / logged["path"]).read_text())
    assert table["columns"] == ["rank", "index", "file", "mIoU", "image", "error_map"]
    assert [row[1] for row in table["data"]] == [int(row["index"]) for row in expected]
    scores = [row[3] for row in table["data"]]
    assert scores == pytest.approx([float(row["mIoU"]) for row in expected], abs=1e-6)
    # The images and their masks travel in the table's artifact, with the class names.
    (artifact,) = [
        r.artifact
        for r in _wandb_records(run.dir)
        if r.HasField("artifact") and r.artifact.type == "run_table"
    ]
    paths = [content.path for content in artifact.manifest.contents]
    assert sum(p.startswith("media/classes/") for p in paths) == 1
    assert sum(p.startswith("media/images/") for p in paths) >= 2 * len(expected)


def test_best_checkpoint_is_a_wandb_artifact_and_its_path_is_in_the_other_loggers(run):
    best = Path(run.metrics["best_checkpoint"])
    (artifact,) = [
        r.artifact
        for r in _wandb_records(run.dir)
        if r.HasField("artifact") and r.artifact.type == "model"
    ]
    run_id = (run.dir / "wandb_id").read_text().strip()
    assert artifact.type == "model" and artifact.name == f"model-{run_id}"
    assert set(artifact.aliases) == {"best", "latest"}
    (content,) = artifact.manifest.contents
    assert content.path == best.name and content.size == best.stat().st_size
    assert json.loads(artifact.metadata)["best_checkpoint"] == str(best)
    saved = yaml.safe_load((run.dir / "csv" / "hparams.yaml").read_text())
    assert saved["best_checkpoint"] == str(best)
    assert saved["config"]["model"]["name"] == "unet"
    saved = yaml.safe_load((run.dir / "tensorboard" / "hparams.yaml").read_text())
    assert saved["config"]["model"]["name"] == "unet" and saved["run"]["git"]


def test_run_dir_holds_the_run_facts(run):
    info = json.loads((run.dir / "run_info.json").read_text())
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert info["git"]["commit"] == (commit or None)
    assert isinstance(info["git"]["dirty"], bool) or not commit
    module = build_module(run.cfg)
    assert info["parameters"]["total"] == sum(p.numel() for p in module.parameters())
    assert info["versions"]["wandb"] and info["versions"]["pytorch-lightning"] == pl.__version__


def test_resumed_training_continues_the_same_wandb_run(run, tmp_path, caplog):
    first_id = (run.dir / "wandb_id").read_text().strip()
    cfg = compose_config(
        "train",
        tiny(
            [
                "logger=[wandb]",
                f"trainer.max_epochs={EPOCHS + 1}",
                f"ckpt_path={run.dir / 'checkpoints' / 'last.ckpt'}",
                "callbacks.validation_samples.num_samples=0",
                "~callbacks.best_checkpoint",
            ]
        ),
        tmp_path,
    )
    OmegaConf.resolve(cfg)
    with caplog.at_level(logging.INFO, logger="segfw"):
        train(cfg)
    assert (tmp_path / "wandb_id").read_text().strip() == first_id
    assert f"continuing run {first_id}" in caplog.text
    (offline,) = (tmp_path / "wandb").glob("offline-run-*")
    assert offline.name.endswith(f"-{first_id}")
    steps = [row["trainer/global_step"] for row in _history(_wandb_records(tmp_path))]
    assert min(steps) >= EPOCHS * 4 - 1  # it continues, it does not start over at step 0


def test_last_means_the_run_dirs_own_wandb_run_and_a_new_dir_a_new_run(wandb_env, tmp_path):
    (tmp_path / "wandb_id").write_text("abc123xy\n")
    assert wandb_logger(str(tmp_path), mode="offline", resume_from="last").version == "abc123xy"
    fresh = wandb_logger(str(tmp_path / "new"), mode="offline").version
    assert fresh != "abc123xy" and (tmp_path / "new" / "wandb_id").read_text().strip() == fresh


def test_sweep_jobs_are_grouped_by_sweep_and_named_by_their_overrides(wandb_env, tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        overrides = ["optimizer.lr=0.01", "experiment=quickstart", "logger=[wandb]"]
        cfg = compose("train", overrides, True)
    with open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "2024-05-01_12-00-00")
        cfg.output_dir = str(tmp_path)
        cfg.logger.wandb.mode = "offline"
    HydraConfig.instance().set_config(cfg)
    try:
        # The command layer names the run and its group; the logger takes them as given.
        logger = build_logger("wandb", cfg.logger.wandb)
        with closing_wandb_run():
            experiment = logger.experiment
            assert experiment.group == "quickstart-2024-05-01_12-00-00"
            assert experiment.name == "experiment=quickstart,optimizer.lr=0.01"
    finally:
        HydraConfig.instance().cfg = None


def test_wandb_run_is_finished_and_marked_failed_when_training_fails(wandb_env, tmp_path):
    import wandb

    logger = wandb_logger(str(tmp_path), mode="offline")
    with pytest.raises(RuntimeError, match="diverged"), closing_wandb_run():
        logger.log_metrics({"train/loss": 1.0}, step=0)
        raise RuntimeError("diverged")
    assert wandb.run is None
    exits = [r.exit.exit_code for r in _wandb_records(tmp_path) if r.HasField("exit")]
    assert exits == [1]


def test_wandb_mode_comes_from_config_then_environment(wandb_env, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.INFO, logger="segfw"):
        wandb_logger(str(tmp_path))
    assert "OFFLINE (WANDB_MODE=offline)" in caplog.text
    with pytest.raises(ConfigError, match="logger.wandb.mode='later'.*online, offline, disabled"):
        wandb_logger(str(tmp_path), mode="later")
    monkeypatch.delenv("WANDB_MODE")
    # Asked for online without credentials: an error with the fix, never a login prompt.
    with pytest.raises(ConfigError, match="no W&B credentials.*wandb login"):
        wandb_logger(str(tmp_path), mode="online")


def test_progress_bar_reads_metrics_once_per_log_interval(monkeypatch):
    reads = []
    original = pl.Trainer.progress_bar_metrics
    monkeypatch.setattr(
        pl.Trainer, "progress_bar_metrics", property(lambda t: reads.append(1) or original.fget(t))
    )
    counts = {}
    for bar in (RichProgressBar(), ProgressBar()):
        reads.clear()
        trainer = pl.Trainer(
            accelerator="cpu",
            max_steps=12,
            log_every_n_steps=4,
            callbacks=[bar],
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(Regression())
        counts[type(bar).__name__] = len(reads)
    assert counts["RichProgressBar"] >= 12  # Lightning's: after every batch
    assert counts["ProgressBar"] <= 12 // 4 + 2  # ours: every 4 steps, and at the epoch's end


def _tensorboard(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0, "tensors": 0}
    )
    events.Reload()
    return events


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _offline_dir(run_dir: Path) -> Path:
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    return offline


def _wandb_records(run_dir: Path) -> list[Any]:
    """The records of a wandb offline run's ``run-<id>.wandb`` file, once it is complete.

    wandb's service writes the last records, the exit record last, just after ``wandb.finish()``
    has returned: wait for it.
    """
    (path,) = _offline_dir(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + 30
    while True:
        records = _parse_wandb_file(path.read_bytes())
        if any(r.HasField("exit") for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def _parse_wandb_file(data: bytes) -> list[Any]:
    """The protobuf records of a ``.wandb`` file, up to the last complete one.

    The file is a W&B header (``:W&B``, 2-byte magic, version) followed by a LevelDB log: 32 KiB
    blocks of chunks, each with a 7-byte header (CRC32C, little-endian length, type: 1 a whole
    record, 2/3/4 its first/middle/last part) and a protobuf ``Record`` as payload.
    """
    from wandb.proto.wandb_internal_pb2 import Record

    assert data[:4] == b":W&B"
    block, position, parts, records = 32768, 7, [], []
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little room for a chunk header: block padding
            position += block - position % block
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        if position + 7 + length > len(data):  # still being written
            break
        parts.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):
            records.append(Record.FromString(b"".join(parts)))
            parts = []
    return records


def _history(records: list[Any]) -> list[dict[str, Any]]:
    """The logged rows, nested keys (an image list's ``filenames``, ``all_masks``) as dicts."""
    rows = []
    for record in records:
        if not record.HasField("history"):
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            *parents, key = list(item.nested_key) or [item.key]
            node = row
            for parent in parents:
                node = node.setdefault(parent, {})
            node[key] = json.loads(item.value_json)
        rows.append(row)
    return rows
