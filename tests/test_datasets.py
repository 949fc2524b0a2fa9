"""The standard layouts: each trains, decodes its labels to the classes its images show, and says
what it expected when the root is wrong."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import compose_config, tiny
from layouts import (
    CITYSCAPES_IDS,
    FOLDER_COLOURS,
    FOLDER_IGNORE,
    colour_mismatches,
    save_mask,
    save_rgb,
    write_ade20k,
    write_camvid,
    write_cityscapes,
    write_colour_folder,
    write_voc,
)
from segfw.commands.config import build_datamodule
from segfw.commands.train import train
from segfw.data.files import read_mask

FOLDER_COLOUR_ARGS = [
    "data=folder",
    "data.num_classes=3",
    "data.class_names=[background,red,blue]",
    f"data.mask_colors={FOLDER_COLOURS}".replace(" ", ""),
    f"data.ignore_colors=[{FOLDER_IGNORE}]".replace(" ", ""),
]


def voc(tmp_path):
    write_voc(tmp_path, {"train": ["2007_000032", "2007_000039"], "val": ["2007_000063"]})
    return ["data=voc", f"data.root={tmp_path / 'VOCdevkit'}"], [0, 5, 15, 20, 255]


def cityscapes(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes", {"train": 3, "val": 2})
    return ["data=cityscapes", f"data.root={root}"], sorted(set(CITYSCAPES_IDS.values()))


def ade20k(tmp_path):
    write_ade20k(tmp_path, {"training": 3, "validation": 2})
    return ["data=ade20k", f"data.root={tmp_path}"], [0, 1, 74, 149, 255]


def camvid(tmp_path):
    root = write_camvid(tmp_path / "CamVid", {"train": 3, "val": 2, "test": 2})
    return ["data=camvid", f"data.root={root}"], [0, 3, 8, 10, 11]


def colour_folder(tmp_path):
    root = write_colour_folder(tmp_path / "mine", {"train": 3, "val": 2, "test": 2})
    return [*FOLDER_COLOUR_ARGS, f"data.root={root}"], [0, 1, 2, 255]


LAYOUTS = {
    "voc": voc,
    "cityscapes": cityscapes,
    "ade20k": ade20k,
    "camvid": camvid,
    "folder_colours": colour_folder,
}


def data_config(overrides, tmp_path):
    return compose_config("train", tiny(overrides), tmp_path / "run")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_trains_one_step(layout, train_config, tmp_path):
    overrides, _ = LAYOUTS[layout](tmp_path)
    metrics = train(train_config(*overrides, "trainer.fast_dev_run=true"))
    assert 0.0 <= metrics["val/mIoU"] <= 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_masks_decode_to_the_classes_their_images_show(layout, tmp_path):
    overrides, labels = LAYOUTS[layout](tmp_path)
    datamodule = build_datamodule(
        data_config(overrides, tmp_path).data, {"height": 64, "width": 64}
    )
    for stage in ("train", "val"):
        source = datamodule.source(stage)
        for index in range(len(source)):
            image, mask = source.load(index)
            assert set(np.unique(mask)) <= set(labels), source.name(index)
            assert colour_mismatches(image, mask, labels) == 0, source.name(index)


def test_cityscapes_keeps_the_19_train_ids_and_ignores_every_other_label_id(tmp_path):
    root = write_cityscapes(tmp_path, {"train": 1, "val": 1})
    path = next((root / "gtFine" / "train").glob("*/*_labelIds.png"))
    save_mask(path, np.arange(34, dtype=np.uint8).repeat(2).reshape(4, 17))
    source = build_datamodule(
        data_config(["data=cityscapes", f"data.root={root}"], tmp_path).data,
        {"height": 64, "width": 64},
    ).source("train")
    decoded = read_mask(path, source.masks).ravel()[::2]
    expected = np.full(34, 255)
    expected[[7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]] = range(19)
    assert decoded.tolist() == expected.tolist()


def test_ade20k_reduces_zero_label_once(tmp_path):
    write_ade20k(tmp_path, {"training": 1, "validation": 1})
    path = next((tmp_path / "ADEChallengeData2016" / "annotations" / "training").iterdir())
    source = build_datamodule(
        data_config(["data=ade20k", f"data.root={tmp_path}"], tmp_path).data,
        {"height": 64, "width": 64},
    ).source("train")
    save_mask(path, np.array([[0, 1, 2, 150]], np.uint8))
    assert read_mask(path, source.masks).tolist() == [[255, 0, 1, 149]]
    save_mask(path, np.array([[0, 1, 151, 200]], np.uint8))
    with pytest.raises(ValueError, match=rf"{path.name} holds label ids \[151, 200\].*1..150"):
        read_mask(path, source.masks)


def test_voc_reads_palette_indices_not_colours_and_refuses_rgb_masks(tmp_path):
    root = write_voc(tmp_path, {"train": ["a"], "val": ["b"]})
    path = root / "SegmentationClass" / "a.png"
    assert Image.open(path).mode == "P"
    source = build_datamodule(
        data_config(["data=voc", f"data.root={root}"], tmp_path).data, {"height": 64, "width": 64}
    ).source("train")
    assert set(np.unique(source.load(0)[1])) == {0, 5, 15, 20, 255}
    save_rgb(path, np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=rf"Mask {path} is a PIL mode 'RGB' image; expected"):
        source.load(0)


def test_voc_sbd_list_adds_training_ids_but_never_validation_ones(tmp_path):
    write_voc(tmp_path, {"train": ["t1", "t2"], "val": ["v1"]}, sbd=["s1", "s2"])
    lists = tmp_path / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    # train_aug.txt lists the SBD IDs and every VOC ID, v1 included.
    overrides = [
        "data=voc",
        f"data.root={tmp_path / 'VOCdevkit'}",
        f"data.extra_ids={lists / 'train_aug.txt'}",
    ]
    datamodule = build_datamodule(
        data_config(overrides, tmp_path).data, {"height": 64, "width": 64}
    )
    train_pairs = datamodule.source("train").pairs
    assert [(i.stem, m.parent.name) for i, m in train_pairs] == [
        ("t1", "SegmentationClass"),
        ("t2", "SegmentationClass"),
        ("s1", "SegmentationClassAug"),
        ("s2", "SegmentationClassAug"),
    ]
    assert [i.stem for i, _ in datamodule.source("val").pairs] == ["v1"]


def test_camvid_void_is_the_ignore_index_and_other_values_are_refused(tmp_path):
    root = write_camvid(tmp_path, {"train": 2, "val": 1, "test": 1})
    datamodule = build_datamodule(
        data_config(["data=camvid", f"data.root={root}"], tmp_path).data,
        {"height": 64, "width": 64},
    )
    assert datamodule.hparams.ignore_index == 11
    mask = next((root / "valannot").iterdir())
    save_mask(mask, np.full((48, 64), 12, np.uint8))
    with pytest.raises(ValueError, match=rf"{mask.name} holds values \[12\].*ignore_index=11"):
        datamodule.dataset("val")[0]


def test_unknown_mask_colour_names_the_file_and_the_colour(tmp_path, train_config):
    overrides, _ = colour_folder(tmp_path)
    path = tmp_path / "mine" / "masks" / "train" / "img1.png"
    image = np.asarray(Image.open(path)).copy()
    image[:2, :3] = [10, 200, 30]
    save_rgb(path, image)
    with pytest.raises(
        ValueError, match=rf"Mask {path} holds 1 colour\(s\).*\[10, 200, 30\] \(RGB\), at 6 pixel"
    ):
        train(train_config(*overrides))


def test_colour_table_must_give_one_colour_per_class(tmp_path, train_config):
    overrides, _ = colour_folder(tmp_path)
    with pytest.raises(ValueError, match=r"has 3 colours but data.num_classes=4.*data.mask_colors"):
        train(train_config(*overrides, "data.num_classes=4", "data.class_names=[a,b,c,d]"))
    with pytest.raises(ValueError, match=r"Colour \[0, 0, 0\] is listed twice"):
        train(train_config(*overrides, "data.ignore_colors=[[0,0,0]]"))


def test_cityscapes_label_ids_must_match_the_classes(tmp_path, train_config):
    root = write_cityscapes(tmp_path, {"train": 1, "val": 1})
    with pytest.raises(ValueError, match=r"data.label_ids=\[7, 8\] must list 19 distinct"):
        train(train_config("data=cityscapes", f"data.root={root}", "data.label_ids=[7,8]"))


@pytest.mark.parametrize(
    "data, folder, expected",
    [
        ("voc", "SegmentationClass", r"root \(VOC2012, or the VOCdevkit folder holding it\)"),
        ("cityscapes", "gtFine", r"root/leftImg8bit/<split>/<city>/NAME_leftImg8bit.png"),
        ("ade20k", "annotations", r"root/annotations/<split>/NAME.png"),
        ("camvid", "trainannot", r"root/<split>annot/NAME.png"),
    ],
)
def test_missing_or_mislaid_root_says_what_was_expected_where(
    data, folder, expected, tmp_path, train_config
):
    with pytest.raises(ValueError, match=rf"data.root='.*nowhere' does not exist. .*{expected}"):
        train(train_config(f"data={data}", f"data.root={tmp_path / 'nowhere'}"))
    overrides, _ = LAYOUTS[data](tmp_path)
    missing = next(p for p in sorted(tmp_path.rglob(folder)) if p.is_dir())
    missing.rename(missing.with_name("elsewhere"))
    with pytest.raises(ValueError, match=rf"{missing}.* is missing: .*not laid out.*{expected}"):
        train(train_config(*overrides))


def test_loader_defaults_follow_the_machine(tmp_path):
    overrides, _ = colour_folder(tmp_path)
    cfg = compose_config(
        "train", [*overrides, "model.height=64", "model.width=64"], tmp_path / "run"
    )
    datamodule = build_datamodule(cfg.data, cfg.model)
    assert cfg.data.num_workers == "auto" and cfg.data.pin_memory == "auto"
    cpus = len(os.sched_getaffinity(0))
    assert datamodule.workers() == max(1, min(8, cpus - 1))
    loader = datamodule.train_dataloader()
    assert loader.num_workers == datamodule.workers()
    assert loader.persistent_workers and loader.prefetch_factor == 2
    assert loader.pin_memory == torch.cuda.is_available()
