"""segfw.lightning_compat on the installed Lightning: each function read on a real CPU Trainer run,
and the version check. Run it against every Lightning release the pin allows (see its module
docstring) with that release first on the path, e.g.
``pip install --no-deps --target /tmp/pl pytorch-lightning==2.5.3`` and
``PYTHONPATH=$PWD:/tmp/pl python -m pytest tests/test_lightning_compat.py``."""

from __future__ import annotations

import csv
import importlib.util
import warnings
from contextlib import nullcontext
from pathlib import Path

import pytest
import pytorch_lightning as pl
import tomllib
import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch.utils.data import DataLoader, TensorDataset

from segfw import lightning_compat as compat
from segfw.errors import LightningVersionError
from segfw.training.loggers import CSVLogger

ROOT = Path(__file__).resolve().parents[1]
BATCHES = 3  # training batches per epoch


class _Tiny(pl.LightningModule):
    """A linear regression logging ``val/loss``, and ``train/extra`` when told to."""

    def __init__(self, extra: bool = False) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.extra = extra

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        if self.extra:
            self.log("train/extra", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(2 * BATCHES, 2, generator=generator), torch.zeros(6, 1))
    return DataLoader(data, batch_size=2)


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    settings = {
        "accelerator": "cpu",
        "max_epochs": 2,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
        **kwargs,
    }
    return pl.Trainer(**settings)


class _Reads(pl.Callback):
    """What the compat functions read at each hook of a run."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, int, bool]] = []
        self.epochs: list[tuple[str, int, int]] = []
        self.validation_steps: list[tuple[int, int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        trained, ending = compat.batches_trained_in_epoch(trainer), compat.epoch_is_ending(trainer)
        self.batches.append((trainer.current_epoch, batch_idx, trained, ending))

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(("start", trainer.current_epoch, compat.epochs_passed(trainer)))

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs.append(("end", trainer.current_epoch, compat.epochs_passed(trainer)))

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validation_steps.append((compat.logging_step(trainer), trainer.global_step))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of three batches, validated after each, logged to segfw's CSV logger."""
    root = tmp_path_factory.mktemp("run")
    reads = _Reads()
    trainer = _trainer(root, logger=CSVLogger(root, name="", version=""), callbacks=[reads])
    trainer.fit(_Tiny(), train_dataloaders=_loader(), val_dataloaders=_loader())
    return root, reads


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def test_installed_lightning_is_in_the_supported_range():
    assert SpecifierSet(compat.SUPPORTED).contains(Version(pl.__version__), prereleases=True)


def test_supported_range_is_the_pin_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = [d for d in project["dependencies"] if d.startswith("pytorch-lightning")]
    assert [SpecifierSet(p.removeprefix("pytorch-lightning")) for p in pins] == [
        SpecifierSet(compat.SUPPORTED)
    ]


@pytest.mark.parametrize("version", ["2.4.0", "2.5.2", "2.7.0", "3.0.0rc1"])
def test_a_release_outside_the_range_is_refused_naming_it_and_the_range(version):
    with pytest.raises(LightningVersionError) as error:
        compat.check_version(version)
    assert f"pytorch-lightning {version} is installed" in str(error.value)
    assert f"pytorch-lightning{compat.SUPPORTED}" in str(error.value)


def test_importing_the_module_with_an_unsupported_lightning_fails(monkeypatch):
    monkeypatch.setattr(pl, "__version__", "2.4.0")
    # A second copy of the module, executed as an import would, the loaded one left alone.
    spec = importlib.util.spec_from_file_location("compat_copy", compat.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(LightningVersionError, match="pytorch-lightning 2.4.0 is installed"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_batches_trained_count_each_step_and_the_epochs_last_is_seen(run):
    _, reads = run
    expected = [(epoch, i, i + 1, i == BATCHES - 1) for epoch in range(2) for i in range(BATCHES)]
    assert reads.batches == expected


def test_epochs_passed_counts_an_epoch_before_its_end_hooks(run):
    _, reads = run
    # current_epoch advances only after on_train_epoch_end, where checkpoints are saved.
    assert reads.epochs == [("start", 0, 0), ("end", 0, 1), ("start", 1, 1), ("end", 1, 2)]


def test_logging_step_is_the_step_the_validation_scalars_are_logged_at(run):
    root, reads = run
    logged = [int(row["step"]) for row in _rows(root) if row["val/loss"]]
    assert [step for step, _ in reads.validation_steps] == logged == [2, 5]
    # trainer.global_step already counts the epoch's last step: one too far right.
    assert [global_step for _, global_step in reads.validation_steps] == [3, 6]


def test_the_csv_writer_appends_and_widens_the_header_when_run_again(run, tmp_path):
    root, _ = run
    before = _rows(root)
    logger = CSVLogger(root, name="", version="")
    again = _trainer(root, max_epochs=1, logger=logger, log_every_n_steps=1)
    again.fit(_Tiny(extra=True), train_dataloaders=_loader(), val_dataloaders=_loader())
    rows = _rows(root)
    assert rows[: len(before)] == [{**row, "train/extra": ""} for row in before]
    # A row per step with the new key, then the validation's.
    assert [bool(row["train/extra"]) for row in rows[len(before) :]] == [True] * BATCHES + [False]


def test_relaunch_is_seen_only_when_lightning_starts_the_ranks_by_rerunning_the_script(
    tmp_path, monkeypatch
):
    assert compat.relaunches_script(_trainer(tmp_path, strategy="ddp", devices=2))
    assert not compat.relaunches_script(_trainer(tmp_path, devices=1))
    assert not compat.relaunches_script(_trainer(tmp_path, strategy="ddp_spawn", devices=2))
    torchrun = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    for name, value in {**torchrun, "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    assert not compat.relaunches_script(_trainer(tmp_path, strategy="ddp", devices=2))


def test_distributed_sampler_setting_is_read_back(tmp_path):
    assert compat.distributed_sampler_enabled(_trainer(tmp_path))
    assert not compat.distributed_sampler_enabled(_trainer(tmp_path, use_distributed_sampler=False))


class _SaveInsideTheEpoch(pl.Callback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def test_lightnings_mid_epoch_resume_warning_is_the_one_ignored(tmp_path):
    checkpoint = tmp_path / "inside.ckpt"
    first = _trainer(tmp_path, max_epochs=1, callbacks=[_SaveInsideTheEpoch(checkpoint)])
    first.fit(_Tiny(), train_dataloaders=_loader())

    def resume(ignored: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with compat.mid_epoch_resume_warning_ignored() if ignored else nullcontext():
                _trainer(tmp_path, max_epochs=1).fit(
                    _Tiny(), train_dataloaders=_loader(), ckpt_path=checkpoint
                )
        return [str(w.message) for w in caught if "resuming from a checkpoint" in str(w.message)]

    assert resume(ignored=False), "Lightning warns in other words: update _MID_EPOCH_RESUME"
    assert resume(ignored=True) == []
