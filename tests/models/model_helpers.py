"""Helpers of the model tests: building networks at test size, one training step, exports."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnxruntime
import torch
import torch.nn.functional as F
from torch import nn

from segfw.deploy.export import export
from segfw.models import build_model
from segfw.models.backbones import timm_backbone
from segfw.training.module import SegmentationModule

CLASSES = 3
# The smallest side every default network takes (UNet: five halvings); a batch of two, because
# BatchNorm in training mode refuses one value per channel (the 1 x 1 maps at stride 32).
SIDE = 32
BATCH = 2

# One generic encoder of each kind the issue names, the smallest of each: a CNN that max-pools
# (SegNet unpools there), ConvNeXt (first level at stride 4), EfficientNet (timm dilates it),
# RegNet (segfw's à-trous routine at stride 4), a Mix Transformer (attention: no dilation).
ENCODERS = ("resnet18d", "convnext_atto", "efficientnet_b0", "regnetx_002", "mit_b0")
# Narrower decoders than the papers' where an architecture has a width argument: the same
# networks at a tenth of the build time (the papers' widths are tested by the parameter counts).
NARROW = {
    "segformer": {"decoder_channels": 32},
    "upernet": {"decoder_channels": 32},
    "unetpp": {"filters": [16, 32, 64, 128, 256]},
}


def build(name: str, backbone: str, side: int = SIDE, **arguments) -> nn.Module:
    """``name`` on the named ``backbone``, random weights, CLASSES classes."""
    model = {"name": name, "height": side, "width": side, **arguments}
    return build_model(model, {"name": backbone, "weights": None}, CLASSES)


def build_generic(name: str, encoder: str, side: int = SIDE, **arguments) -> nn.Module:
    """``name`` on the timm (or SMP ``mit_b*``) ``encoder``, random weights, CLASSES classes."""
    model = {"name": name, "height": side, "width": side, **arguments}
    backbone = {"name": "timm", "encoder": encoder, "weights": None}
    return build_model(model, backbone, CLASSES)


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def check_training_step(network: nn.Module, side: int = SIDE) -> None:
    """One forward and backward pass in training mode, then a prediction in eval mode: the
    output shape, no NaN, a gradient for every parameter."""
    torch.manual_seed(0)
    images = torch.randn(BATCH, 3, side, side)
    target = torch.randint(0, CLASSES, (BATCH, side, side))

    outputs = network.training_outputs(images)
    loss = sum(w * F.cross_entropy(logits, target) for logits, w in outputs.loss_terms)
    loss.backward()
    assert outputs.logits.shape == (BATCH, CLASSES, side, side)
    assert torch.isfinite(loss) and torch.isfinite(outputs.logits).all()
    no_gradient = [n for n, p in network.named_parameters() if p.grad is None]
    assert not no_gradient, f"no gradient reaches {no_gradient[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in network.parameters())

    network.eval()
    with torch.no_grad():
        prediction = network(images)
    assert prediction.shape == (BATCH, CLASSES, side, side)
    assert torch.isfinite(prediction).all()


def check_export(
    architecture: str, encoder: str, directory: Path, free_size_in_onnx: bool, **arguments
) -> None:
    """Exports a generic-encoder network to ONNX and TorchScript the way ``export.py`` does (the
    export itself checks PyTorch parity at two sizes), then checks the files again here:
    onnxruntime and ``torch.jit.load`` reproduce the logits at the trained size, and at another
    where the size is free."""
    torch.manual_seed(0)
    module = SegmentationModule(
        model={"name": architecture, "height": 64, "width": 64, **arguments},
        backbone={"name": "timm", "encoder": encoder, "weights": None},
        num_classes=CLASSES,
        class_names=[f"class_{i}" for i in range(CLASSES)],
    ).eval()
    generator = torch.Generator().manual_seed(1)
    sizes = [(64, 64), (96, 128)] if free_size_in_onnx else [(64, 64)]
    for fmt in ("onnx", "torchscript"):
        metadata = export(module, fmt, directory)
        assert metadata["normalization"]["mean"] == list(timm_backbone(encoder).mean)
        dynamic = metadata["input"]["dynamic"]["height"]
        assert dynamic == (free_size_in_onnx or fmt == "torchscript"), fmt
        if fmt == "onnx":
            session = onnxruntime.InferenceSession(str(directory / metadata["file"]))

            def run(images, session=session):
                return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit: deprecated, shipped
                run = torch.jit.load(str(directory / metadata["file"]))
        for height, width in sizes if fmt == "onnx" else [(64, 64), (96, 128)]:
            images = torch.randint(0, 256, (2, 3, height, width), generator=generator)
            images = images.to(torch.uint8)
            with torch.no_grad():
                torch.testing.assert_close(run(images), module(images), rtol=0, atol=1e-4)
