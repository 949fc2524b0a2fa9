"""LightningDataModule: one dataset config -> train/val/test DataLoaders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segfw.data.dataset import SegmentationDataset
from segfw.data.formats import open_split
from segfw.data.transforms import eval_transform, train_transform
from segfw.errors import ConfigError


class SegmentationDataModule(pl.LightningDataModule):
    """Loads a segmentation dataset in any of the formats of ``segfw.data.formats``.

    All arguments are plain values, saved in checkpoints, so ``evaluate.py`` can rebuild the same
    data from a checkpoint alone.

    Args:
        format: a key of ``segfw.data.formats.FORMATS``.
        num_classes: number of classes, ``ignore_index`` aside.
        class_names: one name per class, used for per-class metric keys.
        height: network input height (``model.height``): training crop and evaluation size.
        width: network input width (``model.width``).
        ignore_index: mask value left out of loss and metrics (0..255).
        palette: one RGB colour per class, for visualizations.
        batch_size: images per batch in every split.
        num_workers: DataLoader worker processes.
        pin_memory: page-locked batches for faster copies to a GPU; ``None``: when CUDA is there.
        splits: folder/split name of each stage; ``test: null`` when the dataset has none.
        augment: training augmentation: ``hflip`` (bool) and ``scale`` ([low, high]).
        **format_args: the format's own keys (``root`` for folders); checked by its reader.
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
        num_workers: int = 2,
        pin_memory: bool | None = None,
        splits: dict[str, str | None] | None = None,
        augment: dict[str, Any] | None = None,
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
                f"data.palette has {len(palette)} colours but data.num_classes={num_classes}."
            )
        if batch_size < 1 or num_workers < 0:
            raise ConfigError(
                f"data.batch_size={batch_size} must be >= 1, data.num_workers={num_workers} >= 0."
            )
        self.save_hyperparameters()
        self.format_args = format_args
        self.splits = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        self.augment = {"hflip": True, "scale": (1.0, 1.0), **(augment or {})}
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, SegmentationDataset] = {}

    def dataset(self, stage: str) -> SegmentationDataset:
        """The dataset of ``stage`` (train, val or test), opened on first use."""
        if stage not in self.datasets:
            split = self.splits.get(stage)
            if split is None:
                raise ConfigError(
                    f"The dataset has no {stage} split (data.splits.{stage}=null); set "
                    f"data.splits.{stage} to the folder that holds it."
                )
            hp = self.hparams
            source = open_split(hp.format, split, hp.height, hp.width, self.format_args)
            if stage == "train":
                transform = train_transform(hp.height, hp.width, hp.ignore_index, **self.augment)
            else:
                transform = eval_transform(hp.height, hp.width, hp.ignore_index)
            self.datasets[stage] = SegmentationDataset(
                source, transform, hp.num_classes, hp.ignore_index, random=stage == "train"
            )
        return self.datasets[stage]

    def has_split(self, stage: str) -> bool:
        return self.splits.get(stage) is not None

    def setup(self, stage: str) -> None:
        # Open splits up front so layout errors surface before the first step.
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for name in stages.get(stage, ()):
            self.dataset(name)

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        # A last batch of one image breaks batch norm; drop the remainder when there is one.
        return self._loader(dataset, shuffle=True, drop_last=len(dataset) > self.hparams.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))

    def _loader(self, dataset: SegmentationDataset, shuffle: bool = False, drop_last: bool = False):
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
        )
