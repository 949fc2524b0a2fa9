"""The table of dataset formats: ``data.format`` -> how to read one split's samples."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from segfw.choices import check_arguments, choose
from segfw.data.ade20k import read_ade20k
from segfw.data.camvid import read_camvid
from segfw.data.cityscapes import read_cityscapes
from segfw.data.dataset import DataSpec, SampleSource
from segfw.data.folder import read_folder
from segfw.data.synthetic import read_shapes
from segfw.data.voc import read_voc

# Each reader takes (split, DataSpec, **its own data.* keys) and returns the split's samples.
FORMATS: dict[str, Callable[..., SampleSource]] = {
    "shapes": read_shapes,
    "folder": read_folder,
    "voc": read_voc,
    "cityscapes": read_cityscapes,
    "ade20k": read_ade20k,
    "camvid": read_camvid,
}


def open_split(format: str, split: str, spec: DataSpec, args: Mapping[str, Any]) -> SampleSource:
    """Opens one split of a dataset.

    Raises:
        ValueError: unknown format, a key its reader does not take (listing those it does), or a
            root that is missing or not laid out as the format expects.
    """
    reader = choose(FORMATS, format, "data.format")
    check_arguments(reader, args, "data", skip=2)
    return reader(split, spec, **args)
