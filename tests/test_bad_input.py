"""Every kind of bad input stops with a message naming the culprit and the fix."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from helpers import write_folder_dataset
from segfw.commands.config import build_datamodule
from segfw.commands.train import train
from segfw.models import build_model

FOLDER = ["data=folder", "data.num_classes=3", "data.class_names=[a,b,c]", "data.batch_size=2"]


def folder_config(train_config, root, *overrides):
    return train_config(*FOLDER, f"data.root={root}", *overrides)


def test_input_size_not_a_multiple_of_the_stride_suggests_the_nearest_sizes():
    with pytest.raises(ValueError, match=r"model.height=100 .*multiple of 32.*96.*128"):
        build_model(
            {"name": "unet", "height": 100, "width": 64},
            {"name": "mobilenetv2", "weights": None},
            num_classes=3,
        )


def test_bad_input_size_fails_the_train_task_before_any_step(train_config):
    with pytest.raises(ValueError, match=r"model.width=70 .*model.width=64 or model.width=96"):
        train(train_config("model.width=70"))


def test_unknown_model_and_backbone_list_the_choices(train_config):
    with pytest.raises(ValueError, match="Unknown backbone.name='resnet18'.*resnet50"):
        build_model({"name": "unet", "height": 64, "width": 64}, {"name": "resnet18"}, 3)
    with pytest.raises(ValueError, match="Unknown model.name='fcn'.*unet"):
        build_model({"name": "fcn", "height": 64, "width": 64}, {"name": "resnet50"}, 3)


def test_misspelled_model_argument_is_refused(train_config):
    with pytest.raises(ValueError, match="model.outputstride.*model.output_stride"):
        build_model(
            {"name": "deeplabv3plus", "height": 64, "width": 64, "outputstride": 16},
            {"name": "mobilenetv2", "weights": None},
            3,
        )


def test_mask_value_outside_the_classes_names_the_file_and_values(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    bad = root / "masks" / "train" / "img1.png"
    mask = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    mask[:4, :4], mask[4:8, :4] = 7, 9
    cv2.imwrite(str(bad), mask)
    with pytest.raises(ValueError, match=r"img1.png holds values \[7, 9\].*0..2.*ignore_index=255"):
        train(folder_config(train_config, root))


def test_ignore_index_in_masks_is_accepted(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    path = root / "masks" / "val" / "img0.png"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    mask[:8] = 255
    cv2.imwrite(str(path), mask)
    datamodule = build_datamodule(
        folder_config(train_config, root).data, {"height": 64, "width": 64}
    )
    sample = datamodule.dataset("val")[0]
    assert (sample["mask"] == 255).any()


def test_image_and_mask_of_different_sizes_name_the_pair(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    cv2.imwrite(str(root / "masks" / "val" / "img1.png"), np.zeros((40, 64), np.uint8))
    with pytest.raises(
        ValueError, match=r"images/val/img1.png is 64x48 but its mask .*masks/val/img1.png is 64x40"
    ):
        train(folder_config(train_config, root))


def test_image_without_mask_is_named(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    (root / "masks" / "train" / "img2.png").unlink()
    with pytest.raises(
        ValueError, match=r"images/train/img2.png has no mask: expected .*masks/train/img2.png"
    ):
        train(folder_config(train_config, root))


def test_mask_without_image_is_named(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    (root / "images" / "val" / "img0.png").unlink()
    with pytest.raises(
        ValueError, match=r"masks/val/img0.png has no image: expected .*images/val/img0.png"
    ):
        train(folder_config(train_config, root))


def test_empty_split_is_named(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data", counts={"train": 4, "val": 0, "test": 2})
    with pytest.raises(
        ValueError, match=r"The val split is empty: no .png/.jpg images in .*images/val"
    ):
        train(folder_config(train_config, root))


def test_missing_root_says_what_was_expected(train_config, tmp_path):
    with pytest.raises(
        ValueError, match=r"does not exist. Expected the layout root/images/<split>"
    ):
        train(folder_config(train_config, tmp_path / "nowhere"))


def test_root_not_laid_out_names_the_missing_folder(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    (root / "masks").rename(root / "labels")
    with pytest.raises(ValueError, match=r"masks/train is missing: .*not laid out as expected"):
        train(folder_config(train_config, root))


def test_unreadable_image_is_named(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data")
    (root / "images" / "train" / "img3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Cannot read image .*img3.png"):
        train(folder_config(train_config, root))


def test_folder_dataset_without_a_test_split_needs_saying_so(train_config, tmp_path):
    root = write_folder_dataset(tmp_path / "data", counts={"train": 4, "val": 2})
    with pytest.raises(ValueError, match=r"images/test is missing"):
        train(folder_config(train_config, root))
    metrics = train(folder_config(train_config, root, "data.splits.test=null"))
    assert "val/mIoU" in metrics and not any(k.startswith("test/") for k in metrics)
