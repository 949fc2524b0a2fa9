"""PSPNet (Zhao et al., 2017): a dilated encoder of full depth, pyramid pooling over bins 1, 2, 3
and 6, and an optional auxiliary head on the second-deepest level."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule
from torch import nn

from segfw.choices import choose
from segfw.errors import ConfigError
from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork, TrainingOutputs
from segfw.models.blocks import ConvBNReLU
from segfw.models.encoders import build_encoder, dilate

DOWN_SAMPLE_FACTORS = (4, 8, 16)  # the original library's; the encoder is dilated to any of them
BINS = (1, 2, 3, 6)  # pyramid pooling grid sizes, the paper's
FUSION_CHANNELS = 512  # the paper's width after the pyramid
AUX_CHANNELS = 256
DROPOUT = 0.1  # the paper's, before each classifier


class PSPNet(SegmentationNetwork):
    """PSPNet on any backbone.

    Unlike SMP's PSPNet, which cuts the encoder at stride 8, the encoder keeps all its stages and
    is dilated (segfw's à-trous routine) so that its deepest level comes out at
    ``down_sample_factor``, as in the paper.

    Args:
        backbone: the backbone's table entry.
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
        if (
            isinstance(aux_weight, bool)
            or not isinstance(aux_weight, (int, float))
            or aux_weight < 0
        ):
            raise ConfigError(
                f"model.aux_weight={aux_weight!r} is not a weight: give a number >= 0 "
                f"(the paper: 0.4; 0 builds no auxiliary head)."
            )
        self.input_divisor = down_sample_factor
        self.aux_weight = float(aux_weight)
        self.encoder = build_encoder(backbone)
        dilate(self.encoder, down_sample_factor)
        channels = self.encoder.out_channels
        # PSPModule concatenates the features with one pooled branch per bin, each of a quarter
        # of their channels (no BatchNorm on the 1 x 1 bin, which a batch of one could not fit).
        self.decoder = nn.Sequential(
            PSPModule(channels[-1], sizes=BINS),
            ConvBNReLU(2 * channels[-1], FUSION_CHANNELS),
            nn.Dropout2d(DROPOUT),
        )
        self.head = nn.Conv2d(FUSION_CHANNELS, num_classes, kernel_size=1)
        self.aux_head = (
            nn.Sequential(
                ConvBNReLU(channels[-2], AUX_CHANNELS),
                nn.Dropout2d(DROPOUT),
                nn.Conv2d(AUX_CHANNELS, num_classes, kernel_size=1),
            )
            if self.aux_weight
            else None
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._upsample(self.head(self.decoder(self.encoder(images)[-1])), images)

    def training_outputs(self, images: torch.Tensor) -> TrainingOutputs:
        if self.aux_head is None:
            return super().training_outputs(images)
        features = self.encoder(images)
        logits = self._upsample(self.head(self.decoder(features[-1])), images)
        aux_logits = self._upsample(self.aux_head(features[-2]), images)
        return TrainingOutputs(logits, [(logits, 1.0), (aux_logits, self.aux_weight)])

    @staticmethod
    def _upsample(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
