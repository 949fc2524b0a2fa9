"""Encoder weights: local files (an encoder's, a network's, a checkpoint's, in either UNet layout)
into named and generic encoders; ImageNet weights refused where none were released."""

from __future__ import annotations

import pytest
import torch
from model_helpers import CLASSES, build

from segfw.models import build_model, get_backbone
from segfw.models.backbones import timm_backbone
from segfw.models.encoders import build_encoder


def test_local_weights_load_into_the_encoder_even_when_the_network_uses_part_of_it(tmp_path):
    # A full ResNet-50 encoder's state dict (as an ImageNet download is) into SegNet's encoder,
    # which stops at stride 4: the later layers' weights are reported unused, the rest loaded.
    full = build_encoder(get_backbone("resnet50"))
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)
    network = build_model(
        {"name": "segnet", "height": 64, "width": 64, "num_upsample_layers": 2},
        {"name": "resnet50", "weights": str(path)},
        CLASSES,
    )
    for key, value in network.encoder.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key])


@pytest.mark.parametrize("prefix", ["", "net.", "net.net."])
def test_a_whole_networks_state_dict_gives_its_encoder_to_another_architecture(tmp_path, prefix):
    """A network's state dict (prefix ""), a training checkpoint's ("net."), and a checkpoint of
    segfw's UNet in the layout it had before (encoder under "net.net.")."""
    unet = build("unet", "mobilenetv2")  # its encoder's keys are under encoder.
    path = tmp_path / "unet.pth"
    torch.save({f"{prefix}{key}": value for key, value in unet.state_dict().items()}, path)
    deeplab = build_model(
        {"name": "deeplabv3plus", "height": 64, "width": 64},
        {"name": "mobilenetv2", "weights": str(path)},
        CLASSES,
    )
    for key, value in deeplab.encoder.state_dict().items():
        torch.testing.assert_close(value, unet.encoder.state_dict()[key])


def test_local_weights_load_into_a_generic_encoder_dilated_by_timm(tmp_path):
    full = build_encoder(timm_backbone("convnext_atto"))
    path = tmp_path / "convnext_atto.pth"
    torch.save(full.state_dict(), path)
    network = build_model(
        {"name": "deeplabv3plus", "height": 64, "width": 64, "output_stride": 8},
        {"name": "timm", "encoder": "convnext_atto", "weights": str(path)},
        CLASSES,
    )
    for key, value in network.encoder.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key])


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        (
            {"name": "resnet152v2", "weights": "imagenet"},
            r"No ImageNet weights .*resnet152v2.*backbone.weights=null",
        ),
        (
            {"name": "timm", "encoder": "resnetv2_152", "weights": "imagenet"},
            r"No ImageNet weights .*resnetv2_152.*backbone.weights=null",
        ),
    ],
)
def test_imagenet_weights_that_were_never_released_are_refused_with_what_to_do(backbone, message):
    with pytest.raises(ValueError, match=message):
        build_model({"name": "unet", "height": 64, "width": 64}, backbone, CLASSES)


@pytest.mark.parametrize(
    ("saved", "message"),
    [
        ("resnet18d", r"do not fit backbone convnext_atto: \d+ encoder parameters are missing"),
        # Same family, other widths: the same names, other shapes.
        ("convnext_femto", r"do not fit backbone convnext_atto: \d+ of their tensors have other"),
    ],
)
def test_weights_that_do_not_fit_the_encoder_say_so(tmp_path, saved, message):
    path = tmp_path / f"{saved}.pth"
    torch.save(build_encoder(timm_backbone(saved)).state_dict(), path)
    with pytest.raises(ValueError, match=message):
        build_model(
            {"name": "segformer", "height": 64, "width": 64, "decoder_channels": 32},
            {"name": "timm", "encoder": "convnext_atto", "weights": str(path)},
            CLASSES,
        )
