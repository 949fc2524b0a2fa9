"""The one place where segfw reaches into PyTorch Lightning's internals.

Each function below reads or overrides something Lightning offers no public API for; the rest of
segfw uses Lightning's public API only. Lightning may change its internals in any release, so
every function was checked (``tests/test_lightning_compat.py``, on a real CPU Trainer run) against
the oldest and the newest release of :data:`SUPPORTED`, and importing this module refuses any
other version instead of letting a run fail, or go wrong, halfway through.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import pytorch_lightning as pl

# packaging is a dependency of pytorch-lightning itself (its Requires-Dist), present wherever it is.
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.strategies import ParallelStrategy
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from segfw.errors import LightningVersionError

# The pytorch-lightning releases the functions below were checked on (2.5.3 ... 2.6.6; pyproject.toml
# says why not older ones); pyproject.toml pins the same range, and tests/test_lightning_compat.py
# checks that they agree.
SUPPORTED = ">=2.5.3,<2.7"


def check_version(version: str) -> None:
    """Refuses a pytorch-lightning release outside :data:`SUPPORTED`.

    Raises:
        LightningVersionError: ``version`` is outside the range.
    """
    if not SpecifierSet(SUPPORTED).contains(Version(version), prereleases=True):
        raise LightningVersionError(
            f"pytorch-lightning {version} is installed; segfw works with pytorch-lightning"
            f"{SUPPORTED} (segfw/lightning_compat.py reaches into its internals, checked on "
            f"those releases only). Install one: pip install 'pytorch-lightning{SUPPORTED}'."
        )


check_version(pl.__version__)


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning gives the loggers for the values logged now: the count of training
    batches that stepped the optimizers. During the validation at an epoch's end it is one less
    than ``trainer.global_step`` (which already counts the epoch's last step), so pictures logged
    at ``global_step`` would sit one step right of the validation scalars; Lightning's own
    LearningRateMonitor reads the same counter. Checked on 2.5.3 and 2.6.6."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def batches_trained_in_epoch(trainer: pl.Trainer) -> int:
    """The training batches of the current epoch that have passed through ``training_step``:
    the training loop's own count (saved in checkpoints), not the loader's, whose iterator runs
    ahead (workers, prefetching). Checked on 2.5.3 and 2.6.6."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.current.processed  # type: ignore[attr-defined]  # typed as its base class


def epoch_is_ending(trainer: pl.Trainer) -> bool:
    """Whether the batch just trained was the epoch's last: a checkpoint saved now resumes at the
    next epoch, whole. Checked on 2.5.3 and 2.6.6."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return progress.is_last_batch or batches_trained_in_epoch(trainer) >= (
        trainer.num_training_batches
    )


def epochs_passed(trainer: pl.Trainer) -> int:
    """The epochs whose training pass has ended: the number Lightning itself gives the samplers'
    ``set_epoch`` for the pass about to start. Not ``trainer.current_epoch``, which counts
    completed epochs: a checkpoint saved in ``on_train_epoch_end`` holds its epoch as passed but
    not completed. Checked on 2.5.3 and 2.6.6."""
    return trainer.fit_loop.epoch_progress.current.processed  # type: ignore[attr-defined]


def relaunches_script(trainer: pl.Trainer) -> bool:
    """Whether Lightning starts this run's other processes itself by running the command line
    again (``strategy=ddp``'s default ``popen`` start), rather than torchrun, SLURM or
    multiprocessing starting them. Lightning names that launcher only by a private class.
    Checked on 2.5.3 and 2.6.6."""
    strategy = trainer.strategy
    return (
        isinstance(strategy, ParallelStrategy)
        and isinstance(strategy.launcher, _SubprocessScriptLauncher)
        and trainer.world_size > 1
        and strategy.cluster_environment is not None
        and not strategy.cluster_environment.creates_processes_externally
    )


def distributed_sampler_enabled(trainer: pl.Trainer) -> bool:
    """The Trainer's ``use_distributed_sampler`` argument, which it keeps only privately.
    Checked on 2.5.3 and 2.6.6."""
    return trainer._accelerator_connector.use_distributed_sampler


def appending_csv_writer(logger: pl.loggers.CSVLogger) -> ExperimentWriter:
    """The experiment of a CSVLogger, created on first use as Lightning does, except that an
    existing ``metrics.csv`` is appended to instead of deleted. Lightning's CSVLogger keeps its
    experiment and filesystem in private attributes, and its writer deletes the file in a private
    method, which offer no public switch. Checked on 2.5.3 and 2.6.6."""
    if logger._experiment is None:
        logger._fs.makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = _AppendingWriter(log_dir=logger.log_dir)
    return cast(ExperimentWriter, logger._experiment)  # typed as Fabric's writer, its base


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # Lightning deletes an existing metrics.csv here; read its columns instead, so the rows
        # of this session are appended under the same header (widened if new keys appear).
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


# The start of the warning Lightning gives when a run resumes inside an epoch with a loader that
# has no state_dict of its own. Checked on 2.5.3 and 2.6.6.
_MID_EPOCH_RESUME = "You're resuming from a checkpoint that ended before the epoch ended"


@contextmanager
def mid_epoch_resume_warning_ignored() -> Iterator[None]:
    """Inside the block, Lightning does not warn that a run resumed inside an epoch cannot resume
    its loader: ``SegmentationDataModule`` resumes the training order through its own state
    (``state_dict``), which Lightning's check does not look at."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _MID_EPOCH_RESUME, UserWarning)
        yield
