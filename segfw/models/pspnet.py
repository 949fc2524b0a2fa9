"""PSPNet (Zhao et al., 2017): a dilated encoder of full depth, pyramid pooling over bins 1, 2, 3
and 6, and an optional auxiliary head on the second-deepest level."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule
from torch import nn

from segfw.choices import choose
from segfw.models.backbones import Backbone
from segfw.models.base import AuxiliaryLossNetwork, checked_aux_weight
from segfw.models.blocks import DROPOUT, AuxiliaryHead, ConvBNReLU
from segfw.models.encoders import build_encoder

DOWN_SAMPLE_FACTORS = (4, 8, 16)  # the original library's; the encoder is dilated to any of them
BINS = (1, 2, 3, 6)  # pyramid pooling grid sizes, the paper's
FUSION_CHANNELS = 512  # the paper's width after the pyramid


class PSPNet(AuxiliaryLossNetwork):
    """PSPNet on any backbone.

    Unlike SMP's PSPNet, which cuts the encoder at stride 8, the encoder keeps all its stages and
    is dilated (segfw's à-trous routine; timm's own dilation for a generic encoder that has one)
    so that its deepest level comes out at ``down_sample_factor``, as in the paper.

    Args:
        backbone: the backbone.
        num_classes: number of output classes.
        down_sample_factor: input size / the deepest feature size: 4, 8 or 16.
        aux_weight: weight of the auxiliary loss, computed on a head over the second-deepest
            level (the paper: 0.4 on ResNet's res4); 0 builds no auxiliary head.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        down_sample_factor: int = 8,
        aux_weight: float = 0.4,
    ) -> None:
        super().__init__()
        choose(
            DOWN_SAMPLE_FACTORS,
            down_sample_factor,
            "model.down_sample_factor",
            "segfw dilates PSPNet's encoder to the strides of the original library; 32 would "
            "pool the pyramid over 1/32-resolution features",
        )
        self.aux_weight = checked_aux_weight(aux_weight)
        self.input_divisor = down_sample_factor
        self.encoder = build_encoder(
            backbone,
            output_stride=down_sample_factor,
            needed_by=f"model=pspnet with model.down_sample_factor={down_sample_factor}",
        )
        channels = self.encoder.out_channels
        # PSPModule concatenates the features with one pooled branch per bin, each of a quarter
        # of their channels (no BatchNorm on the 1 x 1 bin, which a batch of one could not fit).
        self.decoder = nn.Sequential(
            PSPModule(channels[-1], sizes=BINS),
            ConvBNReLU(2 * channels[-1], FUSION_CHANNELS),
            nn.Dropout2d(DROPOUT),
        )
        self.head = nn.Conv2d(FUSION_CHANNELS, num_classes, kernel_size=1)
        self.aux_head = AuxiliaryHead(channels[-2], num_classes) if self.aux_weight else None

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(features[-1]))
