"""UPerNet: the ConvNeXt authors' parameter count, the auxiliary head, and exports that
reproduce PyTorch's logits."""

from __future__ import annotations

import pytest
import torch
from model_helpers import BATCH, SIDE, build_generic, check_export, parameter_count

from segfw.models import build_model


def test_upernet_convnext_tiny_has_the_published_parameter_count():
    """ConvNeXt paper (Liu et al., 2022, Table 3): UperNet with ConvNeXt-T on ADE20K, 60 M.

    Their mmsegmentation config builds UPerHead with 512 channels and, for training, an FCN
    auxiliary head (one 3 x 3 convolution to 256 channels, on the stride-16 level), and their
    count is of the model so built, auxiliary head included: 60.24 M here with it, 59.32 M
    without. (Swin's authors, with the same heads, report 60 M for Swin-T too: 59.9 M with the
    auxiliary head.) segfw's UPerNet builds that auxiliary head with aux_weight > 0, its
    default, so the count below is of the same model.
    """
    network = build_model(
        {"name": "upernet", "height": 512, "width": 512},
        {"name": "timm", "encoder": "convnext_tiny", "weights": None},
        num_classes=150,
    )
    assert network.aux_head is not None
    assert parameter_count(network) == pytest.approx(60e6, rel=0.02), parameter_count(network)


def test_upernet_auxiliary_head_adds_a_weighted_loss_term_only_when_asked():
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with_aux = build_generic("upernet", "regnetx_002", decoder_channels=32, aux_weight=0.4)
    assert with_aux.aux_head[0][0].in_channels == 152  # RegNetX-200MF's stride-16 level
    assert [w for _, w in with_aux.training_outputs(images).loss_terms] == [1.0, 0.4]
    without = build_generic("upernet", "regnetx_002", decoder_channels=32, aux_weight=0)
    assert without.aux_head is None
    assert len(without.training_outputs(images).loss_terms) == 1


# About 20 to 50 s each on 2 cores; the default suite exports both architectures on a named
# backbone in tests/test_export.py.
@pytest.mark.slow
def test_upernet_exports_to_onnx_and_torchscript_with_pytorchs_logits(tmp_path):
    # Its pyramid pools to 2 x 2, 3 x 3 and 6 x 6 bins, which ONNX fixes at the trained size.
    check_export("upernet", "convnext_atto", tmp_path, free_size_in_onnx=False, decoder_channels=32)
