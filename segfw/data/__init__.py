"""Datasets, transforms and the DataModule."""

from segfw.data.datamodule import SegmentationDataModule
from segfw.data.dataset import SegmentationDataset
from segfw.data.formats import FORMATS, open_split

__all__ = ["FORMATS", "SegmentationDataModule", "SegmentationDataset", "open_split"]
