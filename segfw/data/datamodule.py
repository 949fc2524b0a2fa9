"""LightningDataModule: one dataset config -> checked train/val/test DataLoaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CUDAAccelerator
from torch.utils.data import DataLoader

from segfw.choices import check_arguments, choose
from segfw.data.check import CHECKS, SplitScan, header_problems, scan
from segfw.data.dataset import DataSpec, SampleSource, SegmentationDataset
from segfw.data.files import FilePairs
from segfw.data.formats import open_split
from segfw.data.problems import summary
from segfw.data.samplers import EvaluationBatches, TrainingSampler
from segfw.data.transforms import eval_transform, train_transform
from segfw.errors import ConfigError, DataError
from segfw.lightning_compat import (
    batches_trained_in_epoch,
    distributed_sampler_enabled,
    epoch_is_ending,
    epochs_passed,
)

log = logging.getLogger(__name__)

# More loader processes than this rarely help one GPU, and each holds a copy of the dataset index.
MAX_AUTO_WORKERS = 8


def auto_workers(cpus: int, processes: int, cpus_per_task: int | None = None) -> int:
    """``num_workers: auto``: the CPUs one training process may use, less one for its loop.

    Args:
        cpus: the CPUs this process may run on (its affinity).
        processes: the training processes on this node (devices), which share ``cpus`` when
            Lightning or torchrun started them from one process.
        cpus_per_task: SLURM's ``--cpus-per-task``, under SLURM. srun binds each task to its own
            CPUs, so an affinity no larger than that is this process's share already; divided
            again by the tasks, it left one worker per task.
    """
    shared = cpus_per_task is None or cpus > cpus_per_task
    share = cpus // processes if shared else cpus
    return max(1, min(MAX_AUTO_WORKERS, share - 1))


class SegmentationDataModule(pl.LightningDataModule):
    """Loads a segmentation dataset in any of the formats of ``segfw.data.formats``.

    All arguments are plain values, saved in checkpoints, so ``evaluate.py`` can rebuild the same
    data from a checkpoint alone.

    Args:
        format: a key of ``segfw.data.formats.FORMATS``.
        num_classes: number of classes, ``ignore_index`` aside.
        class_names: one name per class, used for per-class metric keys.
        height: network input height (``model.height``): training crop and ``fit`` size.
        width: network input width (``model.width``).
        ignore_index: mask value left out of loss and metrics (0..255).
        palette: one RGB colour per class, for visualizations.
        batch_size: images per training batch.
        eval_batch_size: images per validation/test batch; ``None``: ``batch_size``.
        num_workers: DataLoader worker processes, or ``auto``: one per CPU core this process may
            use (per device; under srun a task's own CPU set), one core left to the training loop,
            at most 8 (:func:`auto_workers`).
        pin_memory: page-locked batches for faster copies to a GPU, or ``auto``: when training
            on a CUDA device.
        persistent_workers: keep worker processes between epochs (no start-up cost per epoch).
        prefetch_factor: batches each worker prepares ahead.
        splits: folder/split name of each stage; ``test: null`` when the dataset has none.
        augment: training augmentation, the keys of ``segfw.data.transforms.train_transform``:
            ``scale``, ``hflip``, ``color_jitter``.
        eval_mode: ``fit`` or ``whole``; see ``segfw.data.transforms.eval_transform``.
        check: how closely each split is checked when first opened: ``files``, ``headers`` or
            ``full``; see ``segfw.data.check``.
        training_seed: seeds the training order and augmentation, each sample's from
            ``(training_seed, epoch, index)`` alone (``segfw.data.samplers``).
        **format_args: the format's own keys (``root`` for files on disk); checked by its reader.
    """

    def __init__(
        self,
        format: str,
        num_classes: int,
        class_names: Sequence[str],
        height: int,
        width: int,
        ignore_index: int = 255,
        palette: Sequence[Sequence[int]] | None = None,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int | str = "auto",
        pin_memory: bool | str = "auto",
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        splits: Mapping[str, str | None] | None = None,
        augment: Mapping[str, Any] | None = None,
        eval_mode: str = "fit",
        check: str = "headers",
        training_seed: int = 0,
        **format_args: Any,
    ) -> None:
        super().__init__()
        if len(class_names) != num_classes:
            raise ConfigError(
                f"data.class_names has {len(class_names)} names but data.num_classes={num_classes}; "
                f"give one name per class."
            )
        if not 0 <= ignore_index <= 255 or ignore_index < num_classes:
            raise ConfigError(
                f"data.ignore_index={ignore_index} must lie in {num_classes}..255: masks are 8-bit "
                f"and the index must not be a class."
            )
        if palette is not None and len(palette) != num_classes:
            raise ConfigError(
                f"data.palette has {len(palette)} colours but data.num_classes={num_classes}; "
                f"give one [R, G, B] per class (data=folder takes them from data.mask_colors)."
            )
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ConfigError(
                f"data.batch_size={batch_size} and data.eval_batch_size={eval_batch_size} must be "
                f">= 1 (eval_batch_size may be null: the same as batch_size)."
            )
        if num_workers != "auto" and not (isinstance(num_workers, int) and num_workers >= 0):
            raise ConfigError(f"data.num_workers={num_workers!r}: give auto or a count >= 0.")
        if pin_memory != "auto" and not isinstance(pin_memory, bool):
            raise ConfigError(f"data.pin_memory={pin_memory!r}: give auto, true or false.")
        if prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor={prefetch_factor} must be >= 1.")
        choose(CHECKS, check, "data.check")
        if training_seed < 0:
            raise ConfigError(f"seed={training_seed} must be >= 0.")
        augment = dict(augment or {})
        check_arguments(train_transform, augment, "data.augment", skip=3)
        self.save_hyperparameters()
        self.format_args = format_args
        self.splits = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        self.spec = DataSpec(height, width, num_classes, ignore_index)
        # Built now, so that a bad augmentation setting fails before any file is opened.
        self.train_transform = train_transform(height, width, ignore_index, **augment)
        self.eval_transform = eval_transform(height, width, ignore_index, eval_mode)
        self.datasets: dict[str, SegmentationDataset] = {}
        self.resume_at: tuple[int, int] | None = None  # (epoch, samples) of a loaded checkpoint

    def source(self, stage: str) -> SampleSource:
        """The samples of ``stage`` (train, val or test), listed but not checked.

        Raises:
            ConfigError: the stage has no split, or its files are not laid out as expected.
        """
        split = self.splits.get(stage)
        if split is None:
            raise ConfigError(
                f"The dataset has no {stage} split (data.splits.{stage}=null); set "
                f"data.splits.{stage} to the folder that holds it."
            )
        try:
            return open_split(self.hparams["format"], split, self.spec, self.format_args)
        except ConfigError as error:
            if stage == "train":
                raise
            raise ConfigError(
                f"{error} If the dataset has no {stage} split, pass data.splits.{stage}=null."
            ) from None

    def dataset(self, stage: str) -> SegmentationDataset:
        """The dataset of ``stage``, opened and checked (``data.check``) on first use.

        Raises:
            ConfigError: the split cannot be opened.
            DataError: the split's files have problems; the message names them.
        """
        if stage not in self.datasets:
            hp = self.hparams
            source = self.source(stage)
            problems = list(source.problems) if isinstance(source, FilePairs) else []
            if not problems and hp["check"] == "headers":
                problems = header_problems(source)
            elif not problems and hp["check"] == "full":
                problems = self._scan(stage, source, images=True).problems
            if problems:
                raise DataError(summary(problems, str(self.splits[stage])), problems[0].kind)
            transform = self.train_transform if stage == "train" else self.eval_transform
            self.datasets[stage] = SegmentationDataset(
                source, transform, hp["num_classes"], hp["ignore_index"], random=stage == "train"
            )
        return self.datasets[stage]

    def check_splits(self, stages: Sequence[str]) -> None:
        """Opens and checks the splits of ``stages`` now, so that a missing or broken split stops
        a run before its first step rather than after its last."""
        for stage in stages:
            self.dataset(stage)

    def class_pixels(self, stage: str = "train") -> SplitScan:
        """Pixels per class over the masks of ``stage`` (images are not decoded).

        Raises:
            DataError: a mask is unreadable or holds values that are neither a class nor
                ``ignore_index``.
        """
        result = self._scan(stage, self.source(stage), images=False)
        if result.problems:
            raise DataError(
                summary(result.problems, str(self.splits[stage])), result.problems[0].kind
            )
        return result

    def _scan(self, stage: str, source: SampleSource, images: bool) -> SplitScan:
        hp = self.hparams
        label = f"the {self.splits[stage]} split"
        return scan(source, hp["num_classes"], hp["ignore_index"], images, self.workers(), label)

    def has_split(self, stage: str) -> bool:
        return self.splits.get(stage) is not None

    def state_dict(self) -> dict[str, int]:
        """Where training stands in its epoch, which Lightning saves into checkpoints: a checkpoint
        saved inside an epoch (a SLURM requeue) resumes after the samples already trained.

        The training loop's count, not the loader's, whose iterator runs ahead (workers,
        prefetching). Lightning's own resumable-loader path (a loader with ``state_dict``) is not
        used: it loses the state whenever the training loader is asked for before the loops are
        restored, e.g. by ``trainer.estimated_stepping_batches`` in ``configure_optimizers``
        (Lightning issue #20550); the DataModule's state is restored before anything asks.
        """
        if self.trainer is None:
            return {}
        if epoch_is_ending(self.trainer):
            # Saved at the epoch's end (last.ckpt): the next pass is the next epoch, whole.
            return {"epoch": self.trainer.current_epoch + 1, "samples": 0}
        return {
            "epoch": self.trainer.current_epoch,
            "samples": batches_trained_in_epoch(self.trainer) * self.hparams["batch_size"],
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:  # empty when saved outside a Trainer
            self.resume_at = (state_dict["epoch"], state_dict["samples"])

    def setup(self, stage: str) -> None:
        # Lightning would wrap the loaders' samplers in its DistributedSampler, which repeats
        # images to even out the processes' shares; these loaders shard the data themselves.
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1 and distributed_sampler_enabled(trainer):
            raise ConfigError(
                "SegmentationDataModule gives each process its own share of the data: create "
                "the Trainer with use_distributed_sampler=False."
            )
        # Open and check splits up front so that data errors surface before the first step.
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        self.check_splits(stages.get(stage, ()))

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        replicas, rank = self._processes()
        sampler = TrainingSampler(len(dataset), self.hparams["training_seed"], replicas, rank)
        if self.resume_at is not None:
            # A resumed run: Lightning asks for this loader (estimated_stepping_batches) and may
            # start its iterator (workers) before it restores the loop's epoch. Its first pass
            # is the rest of the checkpoint's epoch.
            epoch, samples = self.resume_at
            sampler.set_epoch(epoch)
            sampler.skip(epoch, samples)
            self.resume_at = None
        elif self.trainer is not None:
            # Lightning creates the loader's iterator before it calls set_epoch on a resumed run:
            # start at the epoch it is about to pass.
            sampler.set_epoch(epochs_passed(self.trainer))
        # A last batch of one image breaks batch norm; drop the remainder when there is one.
        drop_last = len(sampler) > self.hparams["batch_size"]
        return self._loader(
            dataset, self.hparams["batch_size"], sampler=sampler, drop_last=drop_last
        )

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    @property
    def eval_batch_size(self) -> int:
        """Images per validation/test batch: ``data.eval_batch_size``, else ``data.batch_size``."""
        return self.hparams["eval_batch_size"] or self.hparams["batch_size"]

    def eval_dataloader(self, stage: str, batch_size: int | None = None) -> DataLoader:
        """The images and labels of ``stage``, each on one process only, in batches of images of
        one size (``SegmentationModule`` pads each to its network's input divisor).

        Args:
            stage: val or test.
            batch_size: images per batch; ``None``: ``data.eval_batch_size``.
        """
        hp = self.hparams
        dataset = self.dataset(stage)
        if hp["eval_mode"] == "whole":
            sizes = [dataset.source.image_size(i) for i in range(len(dataset))]
        else:  # every image comes out of the transform at the input size
            sizes = [(hp["height"], hp["width"])] * len(dataset)
        replicas, rank = self._processes()
        batches = EvaluationBatches(sizes, batch_size or self.eval_batch_size, replicas, rank)
        return self._loader(dataset, batch_sampler=batches)

    def _processes(self) -> tuple[int, int]:
        """(number of processes, this one's rank)."""
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def workers(self) -> int:
        """The number of DataLoader worker processes ``data.num_workers`` stands for."""
        if self.hparams["num_workers"] != "auto":
            return self.hparams["num_workers"]
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        devices = self.trainer.num_devices if self.trainer is not None else 1
        per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
        return auto_workers(cpus or 1, devices, int(per_task) if per_task.isdigit() else None)

    def _pin_memory(self) -> bool:
        if self.hparams["pin_memory"] != "auto":
            return self.hparams["pin_memory"]
        if self.trainer is not None:
            return isinstance(self.trainer.accelerator, CUDAAccelerator)
        return torch.cuda.is_available()

    def _loader(
        self, dataset: SegmentationDataset, batch_size: int = 1, **options: Any
    ) -> DataLoader:
        workers = self.workers()
        return DataLoader(
            dataset,
            batch_size=1 if "batch_sampler" in options else batch_size,  # torch's rule
            num_workers=workers,
            pin_memory=self._pin_memory(),
            persistent_workers=self.hparams["persistent_workers"] and workers > 0,
            prefetch_factor=self.hparams["prefetch_factor"] if workers > 0 else None,
            # Each iterator draws a seed for its workers; from the global generator, that draw
            # would sit between a mid-epoch checkpoint's random state, restored first, and the
            # rest of a resumed epoch (dropout), which an uninterrupted run draws before it.
            generator=torch.Generator().manual_seed(self.hparams["training_seed"]),
            **options,
        )
