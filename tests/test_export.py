"""export: every architecture to ONNX and TorchScript, checked against PyTorch by onnxruntime and
torch.jit.load, with the metadata a deployment needs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime
import pytest
import torch

from checkpoints import CLASS_NAMES, PALETTE, save_checkpoint, tiny_module
from helpers import compose_config
from segfw.commands.export import export
from segfw.errors import ConfigError
from segfw.models import ARCHITECTURES, get_backbone

TOLERANCE = 1e-4
SECOND_SIZE = (96, 128)  # height, width: not the trained 64 x 64, not square
# MobileNet v1 has the fewest operators of the backbones every architecture takes, and the ONNX
# exporter's time grows with the operator count (about 10 s per network here).
BACKBONE = "mobilenet"
# Architectures whose ONNX graph holds at the trained size only (see segfw/deploy/export.py): PSPNet
# and UPerNet's pyramid pooling module pool to grids of 2 x 2, 3 x 3 and 6 x 6 bins, which ONNX
# cannot express for a free size.
FIXED_SIZE_IN_ONNX = {"pspnet", "upernet"}


# Heads whose operators the default set's DeepLabv3+, PSPNet, SegNet and SegFormer already export:
# UNet's and UNet++'s decoders are convolutions, concatenations and upsampling, and UPerNet's
# pyramid pooling is PSPNet's with an FPN of convolutions and upsampling on top. They export
# under -m slow, to keep the default suite within its time.
COVERED_BY_THE_DEFAULT_SET = {"unet", "unetpp", "upernet"}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=[pytest.mark.slow] if name in COVERED_BY_THE_DEFAULT_SET else [])
        for name in sorted(ARCHITECTURES)
    ],
)
def exported(request, tmp_path_factory):
    """Each architecture of the table, exported in both formats."""
    architecture = request.param
    module = tiny_module(architecture, BACKBONE)
    directory = tmp_path_factory.mktemp(architecture)
    checkpoint = save_checkpoint(module, directory / "tiny.ckpt")
    metadata = {
        fmt: export(_config(checkpoint, directory, f"format={fmt}"))
        for fmt in ("onnx", "torchscript")
    }
    return architecture, module, directory, metadata


def _config(checkpoint, output, *overrides):
    return compose_config("export", [f"ckpt_path={checkpoint}", f"output={output}", *overrides])


def _images(batch, height, width, seed, dtype=torch.uint8):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=generator)
    return images.to(dtype)


def _max_difference(module, run, images) -> float:
    with torch.no_grad():
        expected = module(images).numpy()
    return float(np.abs(run(images) - expected).max())


def _load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still shipped
        return torch.jit.load(str(path))


def test_onnxruntime_reproduces_the_pytorch_logits(exported):
    architecture, module, directory, metadata = exported
    session = onnxruntime.InferenceSession(str(directory / "model.onnx"))
    (image_input,) = session.get_inputs()
    assert image_input.name == "images" and image_input.type == "tensor(uint8)"

    def run(images):
        return session.run(["logits"], {"images": images.numpy()})[0]

    assert _max_difference(module, run, _images(3, 64, 64, seed=10)) <= TOLERANCE
    other = _images(2, *SECOND_SIZE, seed=11)
    dynamic = metadata["onnx"]["input"]["dynamic"]
    if architecture in FIXED_SIZE_IN_ONNX:
        assert dynamic == {"batch": True, "height": False, "width": False}
        assert "2x2, 3x3, 6x6" in metadata["onnx"]["input"]["fixed_size_reason"]
        # The fixed size is enforced by the graph, never silently computed wrong.
        with pytest.raises(Exception, match="Got invalid dimensions"):
            run(other)
    else:
        assert dynamic == {"batch": True, "height": True, "width": True}
        assert _max_difference(module, run, other) <= TOLERANCE


def test_torchscript_reproduces_the_pytorch_logits_for_uint8_and_float_images(exported):
    _, module, directory, metadata = exported
    assert metadata["torchscript"]["input"]["dynamic"]["height"] is True
    loaded = _load_torchscript(directory / "model.pt")

    def run(images):
        with torch.no_grad():
            return loaded(images).numpy()

    float_images = _images(2, 64, 64, seed=12, dtype=torch.float32)
    assert _max_difference(module, run, float_images) <= TOLERANCE
    assert _max_difference(module, run, _images(3, *SECOND_SIZE, seed=13)) <= TOLERANCE


def test_metadata_states_the_input_contract(exported):
    _, module, directory, metadata = exported
    spec = get_backbone(BACKBONE)
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        meta = metadata[fmt]
        assert json.loads((directory / f"model{suffix}.json").read_text()) == meta
        assert meta["file"] == f"model{suffix}" and (directory / meta["file"]).is_file()
        assert meta["class_names"] == CLASS_NAMES and meta["palette"] == PALETTE
        assert meta["normalization"]["mean"] == list(spec.mean)
        assert meta["normalization"]["std"] == list(spec.std)
        assert (meta["input"]["height"], meta["input"]["width"]) == (64, 64)
        assert meta["input"]["size_multiple_of"] == module.net.input_divisor
        assert meta["input"]["layout"] == "NCHW" and meta["input"]["channels"] == "RGB"
        assert all(c["max_abs_diff"] <= TOLERANCE for c in meta["verification"]["checks"])
    # The same facts travel inside the model files.
    session = onnxruntime.InferenceSession(str(directory / "model.onnx"))
    inside = json.loads(session.get_modelmeta().custom_metadata_map["segfw"])
    assert inside["class_names"] == CLASS_NAMES
    assert inside["input"]["dynamic"] == metadata["onnx"]["input"]["dynamic"]
    files = {"segfw.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(directory / "model.pt"), _extra_files=files)
    assert json.loads(files["segfw.json"])["palette"] == PALETTE


def test_torchscript_with_a_fixed_size_refuses_other_sizes(tmp_path):
    module = tiny_module("unet", BACKBONE)
    checkpoint = save_checkpoint(module, tmp_path / "unet.ckpt")
    metadata = export(_config(checkpoint, tmp_path, "format=torchscript", "dynamic_size=false"))
    assert metadata["input"]["dynamic"]["height"] is False
    loaded = _load_torchscript(tmp_path / "model.pt")
    with torch.no_grad():
        images = _images(2, 64, 64, seed=3)
        assert _max_difference(module, lambda x: loaded(x).numpy(), images) <= TOLERANCE
        with pytest.raises(torch.jit.Error, match="takes images of 64 x 64 .* only; got 96 x 128"):
            loaded(_images(1, *SECOND_SIZE, seed=4))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("format=tflite", r"format='tflite'.*onnx, torchscript"),
        ("dynamic_size=true", r"dynamic_size=True.*Choose one of: auto, false"),
    ],
)
def test_bad_settings_are_refused_before_exporting(tmp_path, override, message):
    checkpoint = save_checkpoint(tiny_module("unet", BACKBONE), tmp_path / "unet.ckpt")
    with pytest.raises(ConfigError, match=message):
        export(_config(checkpoint, tmp_path, override))
    assert not list(tmp_path.glob("model.*"))
