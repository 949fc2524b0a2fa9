"""Augmentation is really applied, moves image and mask together, and differs between epochs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from checkpoints import tiny_module
from helpers import compose_config, tiny
from layouts import colour_mismatches, write_painted_folder
from segfw.commands.config import build_datamodule
from segfw.data.samplers import EvaluationBatches
from segfw.data.transforms import eval_transform

MODEL = {"height": 64, "width": 64}
# Images larger and smaller than the 64 x 64 crop.
SIZES = {"train": [(96, 80), (48, 64), (80, 120), (40, 56)], "val": [(48, 64)], "test": [(48, 64)]}


def data_config(tmp_path, *overrides):
    root = write_painted_folder(tmp_path / "data", SIZES)
    args = ["data=folder", f"data.root={root}", "data.num_classes=3", "data.class_names=[a,b,c]"]
    return compose_config("train", tiny([*args, *overrides]), tmp_path / "run").data


def datamodule_of(tmp_path, *overrides):
    return build_datamodule(data_config(tmp_path, *overrides), MODEL)


def epoch(loader) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """index -> (image, mask) of every sample of one pass."""
    samples = {}
    for batch in loader:
        for i, index in enumerate(batch["index"].tolist()):
            samples[index] = batch["image"][i], batch["mask"][i]
    return samples


def test_two_epochs_draw_different_crops_and_the_seed_repeats_them(tmp_path):
    # One persistent worker, as in training; Lightning calls set_epoch before each epoch.
    datamodule = datamodule_of(tmp_path, "data.num_workers=1", "data.batch_size=2")
    loader = datamodule.train_dataloader()
    first = epoch(loader)
    loader.sampler.set_epoch(1)
    second = epoch(loader)
    assert first.keys() == second.keys() and len(first) == 4
    assert any(not torch.equal(first[i][1], second[i][1]) for i in first)
    again = epoch(
        datamodule_of(tmp_path, "data.num_workers=1", "data.batch_size=2").train_dataloader()
    )
    assert all(torch.equal(first[i][0], again[i][0]) for i in first)


def test_an_epochs_batches_depend_on_the_seed_and_epoch_alone_not_on_workers(tmp_path):
    # What makes resume exact with any loader settings: the same (seed, epoch) gives the same
    # batches, in the same order, whether loaded in-process or by 2 persistent workers that have
    # already served other epochs; another seed gives others.
    def batches(workers: int, seed: int, epochs: list[int]) -> list[torch.Tensor]:
        data = data_config(tmp_path)
        datamodule = build_datamodule(data, MODEL, seed, num_workers=workers, batch_size=2)
        loader = datamodule.train_dataloader()
        images = []
        for number in epochs:
            loader.sampler.set_epoch(number)
            images.append(torch.cat([batch["image"] for batch in loader]))
        return images

    in_process = batches(0, seed=7, epochs=[3])[0]
    workers = batches(2, seed=7, epochs=[0, 1, 2, 3])[-1]
    assert torch.equal(in_process, workers)
    assert not torch.equal(in_process, batches(0, seed=8, epochs=[3])[0])


def test_augmented_masks_stay_aligned_with_their_images(tmp_path):
    datamodule = datamodule_of(tmp_path, "data.augment.color_jitter=null")
    dataset = datamodule.dataset("train")
    torch.manual_seed(0)
    for _ in range(6):
        for index in range(len(dataset)):
            sample = dataset[index]
            image = sample["image"].permute(1, 2, 0).numpy()
            mask = sample["mask"].numpy()
            assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
            # Nearest-neighbour masks: no value appears that the source mask did not hold.
            assert set(np.unique(mask)) <= {0, 1, 2, 255}
            # Padding: black image, ignored mask, and nowhere else.
            assert (image[mask == 255] == 0).all()
            # Up to 2x enlargement blends colours up to 2 pixels from each class border.
            assert colour_mismatches(image, mask, [0, 1, 2, 255], margin=2) == 0


def test_random_scale_resamples_image_and_mask_by_the_same_factor(tmp_path):
    datamodule = datamodule_of(
        tmp_path,
        "data.augment.scale=[2.0,2.0]",
        "data.augment.hflip=false",
        "data.augment.color_jitter=null",
    )
    dataset = datamodule.dataset("train")
    _, source_mask = dataset.source.load(1)  # 48 x 64: 96 x 128 when doubled
    doubled = cv2.resize(source_mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST_EXACT)
    torch.manual_seed(0)
    offsets = set()
    for _ in range(5):
        crop = dataset[1]["mask"].numpy()
        matches = [
            (y, x)
            for y in range(96 - 64 + 1)
            for x in range(128 - 64 + 1)
            if np.array_equal(doubled[y : y + 64, x : x + 64], crop)
        ]
        assert matches, "the crop is not a window of the mask scaled by 2"
        offsets.add(matches[0])
    assert len(offsets) > 1  # the crop moves


def test_horizontal_flip_mirrors_image_and_mask_together(tmp_path):
    datamodule = datamodule_of(
        tmp_path, "data.augment.scale=[1.0,1.0]", "data.augment.color_jitter=null"
    )
    dataset = datamodule.dataset("train")
    image, mask = dataset.source.load(1)  # 48 x 64: only the padding's place is random
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        sample = dataset[1]
        out_mask = sample["mask"].numpy()
        rows, cols = np.nonzero(out_mask != 255)
        window = out_mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        pixels = (
            sample["image"]
            .permute(1, 2, 0)
            .numpy()[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        )
        if np.array_equal(window, mask):
            assert np.array_equal(pixels, image)
            seen.add("kept")
        else:
            assert np.array_equal(window, mask[:, ::-1]) and np.array_equal(pixels, image[:, ::-1])
            seen.add("flipped")
    assert seen == {"kept", "flipped"}


def test_colour_jitter_changes_the_image_alone(tmp_path):
    datamodule = datamodule_of(
        tmp_path,
        "data.augment.scale=[1.0,1.0]",
        "data.augment.hflip=false",
        "data.augment.color_jitter.p=1.0",
    )
    dataset = datamodule.dataset("train")
    root = tmp_path / "data"
    image = cv2.imread(str(root / "images" / "train" / "img0.png"))[..., ::-1]
    cv2.imwrite(str(root / "images" / "train" / "img0.png"), image[:64, :64, ::-1])
    cv2.imwrite(str(root / "masks" / "train" / "img0.png"), dataset.source.load_mask(0)[:64, :64])
    sample = dataset[0]  # 64 x 64: the crop is the whole image
    assert np.array_equal(sample["mask"].numpy(), dataset.source.load_mask(0))
    assert not np.array_equal(sample["image"].permute(1, 2, 0).numpy(), image[:64, :64])


def test_fit_shrinks_keeping_the_aspect_ratio_and_never_enlarges():
    fit = eval_transform(64, 64, ignore_index=255, mode="fit")
    wide = fit(image=np.full((48, 128, 3), 7, np.uint8), mask=np.ones((48, 128), np.uint8))
    assert wide["image"].shape == (64, 64, 3)
    assert (wide["mask"][:24] == 1).all() and (
        wide["mask"][24:] == 255
    ).all()  # 48 x 128 -> 24 x 64
    assert (wide["image"][:24] == 7).all() and (wide["image"][24:] == 0).all()
    small = fit(image=np.full((32, 40, 3), 7, np.uint8), mask=np.ones((32, 40), np.uint8))
    assert (small["mask"][:32, :40] == 1).all() and (small["mask"] == 1).sum() == 32 * 40


def test_whole_images_are_batched_by_size_and_each_is_padded_to_the_divisor_alone():
    # Evaluation batches hold images of one size, each image on one process only...
    sizes = [(40, 50), (48, 30), (40, 50), (40, 50), (48, 30)]
    assert EvaluationBatches(sizes, batch_size=2).batches == [[0, 2], [3], [1, 4]]
    shares = [EvaluationBatches(sizes, 2, num_replicas=2, rank=r).batches for r in (0, 1)]
    assert shares == [[[0, 2], [4]], [[1], [3]]]
    # ... and the module pads each image to its network's divisor, with black, and crops back.
    module = tiny_module("unet")  # divisor 32
    image = torch.randint(0, 256, (1, 3, 40, 50), dtype=torch.uint8)
    padded = torch.zeros((1, 3, 64, 64), dtype=torch.uint8)
    padded[..., :40, :50] = image
    with torch.no_grad():
        logits = module(image)
        expected = module.net(module.normalize(padded))[..., :40, :50]
    assert logits.shape == (1, 3, 40, 50) and torch.equal(logits, expected)


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "+data.augment.rotate=10",
            r"data.augment has no setting data.augment.rotate; it takes .*scale.*hflip.*color_jitter",
        ),
        ("data.augment.scale=[2.0,0.5]", r"data.augment.scale=\[2.0, 0.5\] must be \[low, high\]"),
        ("+data.augment.color_jitter.gamma=0.1", r"color_jitter has no setting gamma"),
        ("data.eval_mode=sliding", r"Unknown data.eval_mode='sliding'. Choose one of: fit, whole"),
    ],
)
def test_bad_augmentation_settings_are_refused(override, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        datamodule_of(tmp_path, override)
