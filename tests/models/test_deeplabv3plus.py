"""DeepLabv3+: the encoder dilated to the configured stride, on a named backbone and on a generic
encoder; the Keras reference's parameter count."""

from __future__ import annotations

import pytest
import torch
from model_helpers import build, build_generic, parameter_count

from segfw.models import build_model


@pytest.mark.parametrize("stride", [8, 16])
def test_deeplab_dilates_its_encoder_to_the_configured_stride(stride):
    network = build("deeplabv3plus", "vgg16", side=64, output_stride=stride)
    with torch.no_grad():
        deepest = network.encoder(torch.randn(1, 3, 64, 64))[-1]
    assert deepest.shape[-1] == 64 // stride


@pytest.mark.parametrize("stride", [8, 16])
def test_deeplab_on_convnext_uses_timms_dilation_and_its_stride_4_level(stride):
    network = build_generic("deeplabv3plus", "convnext_atto", side=64, output_stride=stride)
    assert network.encoder.model.feature_info.reduction() == [4, 8, min(16, stride), stride]
    with torch.no_grad():
        features = network.encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64, 32, 16, 8, 64 // min(16, stride), 64 // stride]
    # The decoder's high-resolution branch reads ConvNeXt's first level (stride 4, 40 channels).
    assert network.decoder.block1[0].in_channels == 40


def test_deeplabv3plus_xception_has_the_keras_references_parameter_count():
    # bonlime/keras-deeplab-v3-plus, Xception backbone, 21 classes: 41,258,213 parameters.
    network = build_model(
        {"name": "deeplabv3plus", "height": 64, "width": 64},
        {"name": "xception", "weights": None},
        num_classes=21,
    )
    assert parameter_count(network) == pytest.approx(41_258_213, rel=0.02)
