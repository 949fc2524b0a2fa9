"""SegFormer: the paper's parameter count on MiT-B0, the four levels it reads on any encoder, and
exports that reproduce PyTorch's logits."""

from __future__ import annotations

import pytest
from model_helpers import build_generic, check_export, parameter_count
from torch import nn

from segfw.models import build_model


def test_segformer_b0_has_the_papers_parameter_count():
    # SegFormer paper (Xie et al., 2021, Table 1) and mmsegmentation's model zoo: MiT-B0 with
    # the all-MLP decoder (C = 256) on ADE20K's 150 classes, 3.8 M parameters.
    network = build_model(
        {"name": "segformer", "height": 512, "width": 512},
        {"name": "timm", "encoder": "mit_b0", "weights": None},
        num_classes=150,
    )
    assert parameter_count(network) == pytest.approx(3.8e6, rel=0.02), parameter_count(network)


def test_segformer_reads_the_levels_at_strides_4_to_32_of_any_encoder():
    # EfficientNet-B0's levels: 16 (stride 2), 24, 40, 112, 320 channels; the stride-2 one unread.
    network = build_generic("segformer", "efficientnet_b0", decoder_channels=32)
    projections = [m.in_features for m in network.decoder.modules() if isinstance(m, nn.Linear)]
    assert sorted(projections) == [24, 40, 112, 320]


# About 20 to 50 s each on 2 cores; the default suite exports both architectures on a named
# backbone in tests/test_export.py.
@pytest.mark.slow
def test_segformer_exports_to_onnx_and_torchscript_with_pytorchs_logits(tmp_path):
    check_export("segformer", "mit_b0", tmp_path, free_size_in_onnx=True, decoder_channels=32)
