"""PSPNet: the encoder dilated to down_sample_factor, by timm or by segfw; the auxiliary head."""

from __future__ import annotations

import pytest
import torch
from model_helpers import BATCH, SIDE, build, build_generic
from torch import nn


@pytest.mark.parametrize("factor", [8, 16])
def test_pspnet_dilates_its_encoder_to_the_configured_stride(factor):
    network = build("pspnet", "vgg16", side=64, down_sample_factor=factor)
    with torch.no_grad():
        deepest = network.encoder(torch.randn(1, 3, 64, 64))[-1]
    assert deepest.shape[-1] == 64 // factor


def test_pspnet_on_a_generic_encoder_takes_timms_dilation_where_it_has_one_and_segfws_beyond():
    # RegNet: timm dilates to 8 (its convolutions come with dilation set), not to 4, where
    # segfw's à-trous routine does.
    timms = build_generic("pspnet", "regnetx_002", side=64, down_sample_factor=8)
    segfws = build_generic("pspnet", "regnetx_002", side=64, down_sample_factor=4)
    assert timms.encoder.model.feature_info.reduction()[-1] == 8
    assert segfws.encoder.model.feature_info.reduction()[-1] == 32  # built undilated, then dilated
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert timms.encoder(images)[-1].shape[-1] == 8
        assert segfws.encoder(images)[-1].shape[-1] == 16
    dilations = {m.dilation for m in segfws.encoder.modules() if isinstance(m, nn.Conv2d)}
    assert {(1, 1), (2, 2), (4, 4), (8, 8)} <= dilations


def test_pspnet_auxiliary_head_adds_a_weighted_loss_term_only_when_asked():
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with_aux = build("pspnet", "mobilenetv2", aux_weight=0.4)
    weights = [w for _, w in with_aux.training_outputs(images).loss_terms]
    assert weights == [1.0, 0.4]
    without = build("pspnet", "mobilenetv2", aux_weight=0)
    assert without.aux_head is None
    assert len(without.training_outputs(images).loss_terms) == 1
