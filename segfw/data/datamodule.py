"""LightningDataModule: one dataset config -> checked train/val/test DataLoaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from functools import partial
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
from segfw.data.transforms import eval_transform, pad_collate, train_transform
from segfw.errors import ConfigError

log = logging.getLogger(__name__)

# More loader processes than this rarely help one GPU, and each holds a copy of the dataset index.
MAX_AUTO_WORKERS = 8


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
            use (per device), one core left to the training loop, at most 8.
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

    def source(self, stage: str) -> SampleSource:
        """The samples of ``stage`` (train, val or test), listed but not checked."""
        split = self.splits.get(stage)
        if split is None:
            raise ConfigError(
                f"The dataset has no {stage} split (data.splits.{stage}=null); set "
                f"data.splits.{stage} to the folder that holds it."
            )
        return open_split(self.hparams.format, split, self.spec, self.format_args)

    def dataset(self, stage: str) -> SegmentationDataset:
        """The dataset of ``stage``, opened and checked (``data.check``) on first use.

        Raises:
            ConfigError: the split's files have problems; the message names them.
        """
        if stage not in self.datasets:
            hp = self.hparams
            source = self.source(stage)
            problems = list(source.problems) if isinstance(source, FilePairs) else []
            if not problems and hp.check == "headers":
                problems = header_problems(source)
            elif not problems and hp.check == "full":
                problems = self._scan(stage, source, images=True).problems
            if problems:
                raise ConfigError(summary(problems, self.splits[stage]))
            transform = self.train_transform if stage == "train" else self.eval_transform
            self.datasets[stage] = SegmentationDataset(
                source, transform, hp.num_classes, hp.ignore_index, random=stage == "train"
            )
        return self.datasets[stage]

    def class_pixels(self, stage: str = "train") -> SplitScan:
        """Pixels per class over the masks of ``stage`` (images are not decoded).

        Raises:
            ConfigError: a mask is unreadable or holds values that are neither a class nor
                ``ignore_index``.
        """
        result = self._scan(stage, self.source(stage), images=False)
        if result.problems:
            raise ConfigError(summary(result.problems, self.splits[stage]))
        return result

    def _scan(self, stage: str, source: SampleSource, images: bool) -> SplitScan:
        hp = self.hparams
        label = f"the {self.splits[stage]} split"
        return scan(source, hp.num_classes, hp.ignore_index, images, self.workers(), label)

    def has_split(self, stage: str) -> bool:
        return self.splits.get(stage) is not None

    def setup(self, stage: str) -> None:
        # Open and check splits up front so that data errors surface before the first step.
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for name in stages.get(stage, ()):
            self.dataset(name)

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        # A last batch of one image breaks batch norm; drop the remainder when there is one.
        drop_last = len(dataset) > self.hparams.batch_size
        return self._loader(dataset, self.hparams.batch_size, shuffle=True, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, stage: str) -> DataLoader:
        hp = self.hparams
        collate = partial(pad_collate, ignore_index=hp.ignore_index, divisor=self._input_divisor())
        batch_size = hp.eval_batch_size or hp.batch_size
        return self._loader(self.dataset(stage), batch_size, collate_fn=collate)

    def _input_divisor(self) -> int:
        # Whole images are padded to a size the network takes: a multiple of its input divisor,
        # which the Trainer's module knows. Outside a Trainer nothing needs it.
        if self.trainer is None or self.trainer.lightning_module is None:
            return 1
        return self.trainer.lightning_module.net.input_divisor

    def workers(self) -> int:
        """The number of DataLoader worker processes ``data.num_workers`` stands for."""
        if self.hparams.num_workers != "auto":
            return self.hparams.num_workers
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return max(1, min(MAX_AUTO_WORKERS, (cpus or 1) // devices - 1))

    def _pin_memory(self) -> bool:
        if self.hparams.pin_memory != "auto":
            return self.hparams.pin_memory
        if self.trainer is not None:
            return isinstance(self.trainer.accelerator, CUDAAccelerator)
        return torch.cuda.is_available()

    def _loader(
        self,
        dataset: SegmentationDataset,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        collate_fn=None,
    ) -> DataLoader:
        workers = self.workers()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            collate_fn=collate_fn,
            num_workers=workers,
            pin_memory=self._pin_memory(),
            persistent_workers=self.hparams.persistent_workers and workers > 0,
            prefetch_factor=self.hparams.prefetch_factor if workers > 0 else None,
        )
