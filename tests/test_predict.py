"""predict: masks and overlays at each image's own size, whatever the image's format; bad files
reported, not fatal."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import segfw
from checkpoints import CLASS_NAMES, PALETTE, save_checkpoint, tiny_module
from helpers import compose_config
from segfw.commands.predict import predict
from segfw.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny UNet and its checkpoint."""
    module = tiny_module("unet")
    return module, save_checkpoint(module, tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images in the formats users have, a text file and a truncated PNG. Several hold the same
    picture in different encodings, so their masks must agree."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (37, 90), dtype=np.uint16)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (50, 70), dtype=np.uint8)])).save(
        root / "rgba.png"
    )
    Image.fromarray(rgb[..., 1]).save(root / "grey.png")
    cv2.imwrite(str(root / "grey16.png"), grey16)
    Image.fromarray((grey16 >> 8).astype(np.uint8)).save(root / "grey16_as_8bit.png")
    cv2.imwrite(str(root / "rgb16.png"), rgb[..., ::-1].astype(np.uint16) * 257)  # BGR for cv2
    (root / "nested").mkdir()
    Image.fromarray(rgb).save(root / "nested" / "photo.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes((root / "rgb.png").read_bytes()[:200])
    (root / ".hidden.png").write_bytes(b"")  # e.g. editor or OS metadata: never reported
    return root


@pytest.fixture(scope="module")
def predicted(model, folder, tmp_path_factory):
    _, checkpoint = model
    output = tmp_path_factory.mktemp("predicted")
    cfg = compose_config(
        "predict",
        [f"ckpt_path={checkpoint}", f"input={folder}", f"output={output}", "batch_size=3"],
    )
    return predict(cfg), output


def _mask(output: Path, name: str) -> Image.Image:
    return Image.open(output / "masks" / name)


def test_every_image_gets_a_palette_mask_and_an_overlay_at_its_own_size(predicted, folder):
    summary, output = predicted
    images = ["rgb", "rgba", "grey", "grey16", "grey16_as_8bit", "rgb16", "nested/photo"]
    assert summary["predicted"] == len(images)
    for name in images:
        source = next(folder.glob(f"{name}.*"))
        size = Image.open(source).size
        mask = _mask(output, f"{name}.png")
        assert mask.mode == "P" and mask.size == size, name
        assert mask.getpalette()[: 3 * len(PALETTE)] == [c for rgb in PALETTE for c in rgb]
        assert set(np.unique(np.asarray(mask))) <= {0, 1, 2}
        overlay = Image.open(output / "overlays" / f"{name}.png")
        assert overlay.mode == "RGB" and overlay.size == size
        assert summary["outputs"][str(source)] == [
            str(output / "masks" / f"{name}.png"),
            str(output / "overlays" / f"{name}.png"),
        ]


def test_files_that_are_not_images_are_reported_and_skipped(predicted, folder):
    summary, output = predicted
    assert set(summary["skipped"]) == {str(folder / "notes.txt"), str(folder / "broken.png")}
    assert "not a readable image" in summary["skipped"][str(folder / "notes.txt")]
    assert json.loads((output / "summary.json").read_text())["skipped"] == summary["skipped"]
    assert not (output / "masks" / "notes.png").exists()


def test_a_picture_gets_the_same_mask_in_every_encoding(predicted):
    _, output = predicted
    mask = np.asarray(_mask(output, "rgb.png"))
    assert np.unique(mask).size > 1  # the network's classes follow the picture
    # An alpha channel is dropped; 16-bit colour keeps its high byte.
    assert np.array_equal(np.asarray(_mask(output, "rgba.png")), mask)
    assert np.array_equal(np.asarray(_mask(output, "rgb16.png")), mask)
    # 16-bit grey is scaled to 8 bits (not clipped at 255, which would make it all white).
    grey16 = np.asarray(_mask(output, "grey16.png"))
    assert np.unique(grey16).size > 1
    assert np.array_equal(grey16, np.asarray(_mask(output, "grey16_as_8bit.png")))


def test_the_mask_holds_the_networks_prediction(model, predicted, folder):
    module, _ = model
    _, output = predicted
    # Grey images are read as three equal channels.
    grey = np.asarray(Image.open(folder / "grey.png"))
    pixels = torch.from_numpy(np.repeat(grey[None], 3, axis=0))
    with torch.no_grad():
        # 50 x 70 fits the 64 x 64 input once shrunk to 46 x 64; resized back to 50 x 70.
        scores = module(torch.nn.functional.pad(_shrunk(pixels, (46, 64)), (0, 0, 0, 18)))
    logits = torch.nn.functional.interpolate(
        scores[:, :, :46, :64], size=(50, 70), mode="bilinear", align_corners=False
    )
    expected = logits[0].argmax(0).numpy()
    assert np.unique(expected).size > 1
    assert (np.asarray(_mask(output, "grey.png")) == expected).mean() > 0.99


def _shrunk(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return torch.nn.functional.interpolate(
        image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )


def test_large_images_are_predicted_shrunk_and_masked_at_full_size(model, tmp_path):
    _, checkpoint = model
    image = np.random.default_rng(1).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "large.png")
    Image.fromarray(image[:40, :40]).save(tmp_path / "small.png")
    output = tmp_path / "out"
    cfg = compose_config(
        "predict",
        [
            f"ckpt_path={checkpoint}",
            f"input={tmp_path}",
            f"output={output}",
            "inference=slide",
            "max_pixels=6000",  # 120 x 200 = 24000 pixels: predicted at 60 x 100
            "max_image_pixels=20000",
            "progress=false",
        ],
    )
    summary = predict(cfg)
    # Over max_image_pixels: skipped unread, with the setting to raise.
    assert "max_image_pixels=20000" in summary["skipped"][str(tmp_path / "large.png")]
    cfg.max_image_pixels = 100000
    summary = predict(cfg)
    assert summary["shrunk"] == [str(tmp_path / "large.png")]
    assert _mask(output, "large.png").size == (200, 120)
    assert _mask(output, "small.png").size == (40, 40)


def test_files_sharing_a_stem_keep_apart_and_outputs_are_not_inputs(model, tmp_path):
    _, checkpoint = model
    image = np.zeros((32, 32, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).save(tmp_path / "a.jpg")
    Image.fromarray(image).save(tmp_path / "b.jpg")
    output = tmp_path / "out"
    cfg = compose_config(
        "predict", [f"ckpt_path={checkpoint}", f"input={tmp_path}", f"output={output}"]
    )
    predict(cfg)
    masks = sorted(p.name for p in (output / "masks").iterdir())
    assert masks == ["a.jpg.png", "a.png.png", "b.png"]
    # Run again: the outputs, inside the input folder this time, are not inputs.
    assert predict(cfg)["predicted"] == 3


def test_missing_input_names_the_path(model, tmp_path):
    _, checkpoint = model
    cfg = compose_config(
        "predict", [f"ckpt_path={checkpoint}", f"input={tmp_path / 'nope'}", "output=out"]
    )
    with pytest.raises(ConfigError, match=r"input='.*nope' does not exist"):
        predict(cfg)


def test_command_line_predicts_a_single_file(model, folder, tmp_path):
    _, checkpoint = model
    output = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "predict.py",
            f"ckpt_path={checkpoint}",
            f"input={folder / 'nested' / 'photo.jpg'}",
            f"output={output}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "inference=slide",
            "inference.flip=true",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert _mask(output, "photo.png").size == (70, 50)
    assert json.loads((output / "summary.json").read_text())["predicted"] == 1


@pytest.fixture(scope="module")
def predictor(model):
    _, checkpoint = model
    return segfw.load(checkpoint)


def test_numpy_arrays_are_channels_last_and_a_channels_first_one_is_refused(predictor):
    image = np.random.default_rng(1).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    assert predictor.predict(image).shape == (48, 80)
    with pytest.raises(ConfigError, match=r"channels-last.*got shape \(3, 48, 80\).*transpose"):
        predictor.predict(image.transpose(2, 0, 1))


def test_torch_tensors_are_channels_first_one_image_or_a_batch(predictor):
    image = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    expected = predictor.predict(image)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    assert np.array_equal(predictor.predict(tensor), expected)
    batch = predictor.predict(torch.stack([tensor, tensor.flip(-1)]))
    assert isinstance(batch, list) and len(batch) == 2
    assert np.array_equal(batch[0], expected)
    assert np.array_equal(batch[1], predictor.predict(np.ascontiguousarray(image[:, ::-1])))
    with pytest.raises(ConfigError, match=r"channels-first.*got shape \(48, 80, 3\)"):
        predictor.predict(torch.from_numpy(image))


def test_a_path_is_one_image_a_list_is_each_and_a_missing_file_is_named(predictor, folder):
    rgb = np.array(Image.open(folder / "rgb.png"))
    one = predictor.predict(str(folder / "rgb.png"))
    assert isinstance(one, np.ndarray) and one.shape == (50, 70)
    masks = predictor.predict(
        [str(folder / "rgb.png"), folder / "grey.png", rgb, torch.from_numpy(rgb).permute(2, 0, 1)]
    )
    assert [m.shape for m in masks] == [(50, 70)] * 4
    assert np.array_equal(masks[2], one) and np.array_equal(masks[3], one)
    missing = folder / "no such photo.jpg"
    with pytest.raises(ConfigError, match=rf"^Image file {re.escape(repr(str(missing)))} does not"):
        predictor.predict(str(missing))


def test_the_predictor_names_its_classes_and_colours(predictor):
    assert predictor.class_names == CLASS_NAMES
    assert predictor.palette.dtype == np.uint8
    assert predictor.palette.tolist() == PALETTE
