"""Datasets, transforms, checks and the DataModule."""

from segfw.data.datamodule import SegmentationDataModule
from segfw.data.dataset import DataSpec, SegmentationDataset
from segfw.data.formats import FORMATS, open_split

__all__ = ["FORMATS", "DataSpec", "SegmentationDataModule", "SegmentationDataset", "open_split"]
