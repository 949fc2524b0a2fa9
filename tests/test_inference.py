"""Inference modes: whole image, sliding window, test-time augmentation, and evaluate at the
labels' own resolution."""

from __future__ import annotations

import json

import cv2
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from checkpoints import CLASS_NAMES, save_checkpoint, tiny_module
from helpers import compose_config, write_folder_dataset
from segfw.commands.evaluate import evaluate
from segfw.errors import ConfigError
from segfw.inference.modes import Inference, build_inference, labels_at, resize_logits
from segfw.training.metrics import ConfusionMatrix, scores_from_confusion


class PerPixel(nn.Module):
    """Logits that depend on each pixel alone (a 1 x 1 convolution): the same wherever a window
    or a pass puts the pixel, so every mode must reproduce a plain forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float() / 255)


class Recorder(nn.Module):
    """Returns its input's channels as three class scores and keeps every input it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(images.clone())
        return images.float()


@pytest.fixture(scope="module")
def unet():
    return tiny_module("unet")


def _image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)


def test_slide_with_stride_equal_to_crop_on_an_image_of_crop_size_is_one_forward_pass(unet):
    image = _image(64, 64)
    slide = Inference(64, 64, 32, mode="slide", crop=64, stride=64)
    whole = Inference(64, 64, 32, mode="whole", resize="none")
    with torch.no_grad():
        plain = unet(image[None])[0]
        assert torch.equal(slide.logits(unet, [image])[0], plain)
        assert torch.equal(whole.logits(unet, [image])[0], plain)


@pytest.mark.parametrize("size", [(50, 77), (64, 200), (20, 30), (97, 64)])
@pytest.mark.parametrize("stride", [5, 21, 32])
def test_overlapping_windows_average_back_to_each_pixels_own_logits(size, stride):
    # Every window count, edge window and padded border must cancel out exactly for a model
    # without context; a window misplaced or a pixel counted twice would not.
    model = PerPixel()
    image = _image(*size)
    inference = Inference(32, 32, 32, mode="slide", stride=stride, batch_size=3)
    with torch.no_grad():
        expected = model(image[None])[0]
        got = inference.logits(model, [image])[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_slide_batches_windows_of_several_images_of_different_sizes():
    model = Recorder()
    images = [_image(40, 70, seed=1), _image(64, 64, seed=2)]
    inference = Inference(32, 32, 32, mode="slide", stride=32, batch_size=4)
    logits = inference.logits(model, images)
    # 2 x 3 windows, then 2 x 2: ten windows in batches of at most four, all of the crop's size.
    assert [len(x) for x in model.inputs] == [4, 4, 2]
    assert all(x.shape[-2:] == (32, 32) for x in model.inputs)
    for image, scores in zip(images, logits, strict=True):
        torch.testing.assert_close(scores, image.float())


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_augmentation_is_mirror_equivariant(unet, mode):
    # Predicting the mirrored image must give the mirrored prediction; forgetting to flip the
    # logits back (or flipping the wrong axis) breaks this for any network that is not symmetric.
    image = _image(64, 96)
    inference = Inference(64, 64, 32, mode=mode, resize="none", stride=32, flip=True)
    with torch.no_grad():
        logits = inference.logits(unet, [image])[0]
        mirrored = inference.logits(unet, [image.flip(-1)])[0]
        plain = Inference(64, 64, 32, mode=mode, resize="none", stride=32).logits(unet, [image])[0]
    torch.testing.assert_close(mirrored, logits.flip(-1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(logits, plain, atol=1e-3)  # the mirrored pass did change something


def test_flip_augmentation_changes_nothing_for_a_mirror_symmetric_network():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)  # left-right symmetric kernels
    image = _image(48, 80)
    with torch.no_grad():
        flipped = Inference(64, 64, 16, resize="none", flip=True).logits(conv, [image])[0]
        plain = Inference(64, 64, 16, resize="none").logits(conv, [image])[0]
    torch.testing.assert_close(flipped, plain, atol=1e-4, rtol=1e-5)


def test_each_scale_runs_at_its_size_and_the_passes_are_averaged():
    model = Recorder()
    image = torch.full((3, 40, 60), 90, dtype=torch.uint8)
    inference = Inference(64, 64, 32, mode="whole", resize="fit", scales=[0.5, 1.0, 1.5])
    logits = inference.logits(model, [image])[0]
    # fit: 40 x 60 -> 43 x 64 in a 64 x 64 input; times 0.5 and 1.5, padded to multiples of 32.
    assert [tuple(x.shape[-2:]) for x in model.inputs] == [(32, 32), (64, 64), (96, 96)]
    assert inference.base_size((40, 60)) == (43, 64)
    torch.testing.assert_close(logits, torch.full((3, 43, 64), 90.0))  # mean, not sum


def test_whole_image_keeps_the_aspect_ratio_and_maps_logits_back_to_the_image():
    # Three vertical bands, each pure in one channel; the Recorder's class is the brightest
    # channel. A stretched (not padded) input or logits mapped back without removing the padding
    # would move the band borders.
    image = torch.zeros((3, 40, 120), dtype=torch.uint8)
    for band in range(3):
        image[band, :, band * 40 : (band + 1) * 40] = 200
    model = Recorder()
    inference = Inference(64, 64, 32, mode="whole", resize="fit")
    labels = inference(model, image[None].float())[0].argmax(0)
    (network_input,) = model.inputs
    assert network_input.shape == (1, 3, 64, 64)
    assert network_input[0, :, 21:].abs().sum() == 0  # 40 x 120 -> 21 x 64, padded below
    expected = torch.arange(120).div(40, rounding_mode="floor").expand(40, 120)
    wrong = (labels != expected).sum(0)
    assert set(wrong.nonzero().flatten().tolist()) <= {39, 40, 79, 80}  # at most the borders


def test_shrink_never_enlarges_a_small_image():
    model = Recorder()
    image = _image(20, 30)
    logits = Inference(64, 64, 32, resize="shrink").logits(model, [image])[0]
    (network_input,) = model.inputs
    assert network_input.shape == (1, 3, 64, 64)
    torch.testing.assert_close(network_input[0, :, :20, :30], image.float())
    assert logits.shape == (3, 20, 30)


def test_labels_at_equals_resized_logits_argmax_band_by_band():
    logits = torch.randn(5, 37, 53, generator=torch.Generator().manual_seed(0))
    for size in [(100, 211), (20, 30), (37, 400)]:
        expected = resize_logits(logits, size).argmax(0)
        assert torch.equal(labels_at(logits, size, band_pixels=1000).long(), expected)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "slide", "crop": 40}, r"crop=\[40, 40\].*multiples of 32.*crop=\[32, 32\]"),
        ({"mode": "slide", "stride": [64, 80]}, r"stride=\[64, 80\] must lie in 1..crop"),
        ({"scales": []}, r"scales=\[\].*factors > 0"),
        ({"mode": "tiles"}, r"inference.mode='tiles'.*whole, slide"),
        ({"resize": "pad"}, r"inference.resize='pad'.*shrink, fit, none"),
        ({"overlap": 0.5}, r"inference.overlap.*inference.crop"),
    ],
)
def test_bad_settings_name_the_key_and_what_is_allowed(unet, settings, message):
    with pytest.raises(ConfigError, match=message):
        build_inference(settings, 64, 64, unet.net.input_divisor)


def test_evaluate_scores_each_image_at_its_labels_resolution(tmp_path):
    # Images of 48 x 80 (not the 64 x 64 input), masks unresized: the scores evaluate reports
    # must be the ones of the inference mode's predictions at 48 x 80.
    root = write_folder_dataset(tmp_path / "data", {"test": 3}, size=(48, 80))
    module = tiny_module("unet")
    checkpoint = save_checkpoint(module, tmp_path / "tiny.ckpt")
    data = [
        "data=folder",
        f"data.root={root}",
        "data.num_classes=3",
        f"data.class_names=[{','.join(CLASS_NAMES)}]",
        "data.num_workers=0",
    ]
    cfg = compose_config(
        "evaluate",
        [f"ckpt_path={checkpoint}", "trainer.accelerator=cpu", "inference=slide", *data],
        tmp_path / "eval",
    )
    scores = evaluate(cfg)

    settings = OmegaConf.to_container(cfg.inference, resolve=True)
    inference = build_inference(settings, 64, 64, module.net.input_divisor)
    confusion = ConfusionMatrix(3, 255)
    with torch.no_grad():
        for path in sorted((root / "images" / "test").iterdir()):
            image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            mask = cv2.imread(str(root / "masks" / "test" / path.name), cv2.IMREAD_UNCHANGED)
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
            confusion.update(inference(module, pixels).argmax(1), torch.from_numpy(mask)[None])
    assert int(confusion.compute().sum()) == 3 * 48 * 80
    expected = scores_from_confusion(confusion.compute(), CLASS_NAMES)
    assert scores["test/mIoU"] == pytest.approx(float(expected["mIoU"]), abs=1e-6)
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["inference"]["mode"] == "slide"


def test_evaluate_in_whole_mode_reproduces_validation_on_images_of_the_input_size(tmp_path):
    # The shapes dataset draws images at the model's input size: whole-image inference then sees
    # exactly what validation sees, and every score must agree to the last digit.
    shapes = ["background", "circle", "triangle", "square"]
    module = tiny_module("unet", class_names=shapes, palette=None)
    checkpoint = save_checkpoint(module, tmp_path / "tiny.ckpt")
    common = [
        f"ckpt_path={checkpoint}",
        "trainer.accelerator=cpu",
        "data=shapes",
        "data.sizes.test=6",
        "data.num_workers=0",
    ]
    plain = evaluate(compose_config("evaluate", common, tmp_path / "plain"))
    whole = evaluate(compose_config("evaluate", [*common, "inference=whole"], tmp_path / "whole"))
    for key in ("test/mIoU", "test/pixel_acc", "test/loss"):
        assert whole[key] == pytest.approx(plain[key], abs=1e-6), key
