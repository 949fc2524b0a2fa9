"""SegFormer (Xie et al., 2021): an all-MLP decoder over an encoder's levels at strides 4 to 32,
designed for the Mix Transformer encoders (``mit_b0`` ... ``mit_b5``)."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder

from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork, checked_width
from segfw.models.blocks import Classifier, upsample_to
from segfw.models.encoders import MAX_DEPTH, build_encoder


class SegFormer(SegmentationNetwork):
    """SegFormer's decoder (SMP's) on any backbone or generic encoder.

    Each of the encoder's levels at strides 4, 8, 16 and 32 is projected by a linear layer to
    ``decoder_channels``, up-sampled to stride 4; the four are concatenated and fused by a 1 x 1
    conv-BN-ReLU; dropout 0.1 and a 1 x 1 classifier follow, and the logits are up-sampled
    bilinearly to the input's size. A stride-2 level, where an encoder has one, is not read: the
    paper's decoder reads four levels.

    Args:
        backbone: the backbone.
        num_classes: number of output classes.
        decoder_channels: the decoder's width (the paper's C): 256 for MiT-B0 and B1, 768 for
            B2 to B5.

    Raises:
        ConfigError: ``decoder_channels`` is not a positive width.
    """

    input_divisor = 32

    def __init__(self, backbone: Backbone, num_classes: int, decoder_channels: int = 256) -> None:
        super().__init__()
        checked_width(
            decoder_channels, "model.decoder_channels", "256 for mit_b0 and mit_b1, 768 beyond"
        )
        self.encoder = build_encoder(backbone, needed_by="model=segformer")
        # SMP's decoder skips level 1 where it has no channels, as on its Mix Transformers;
        # every encoder is presented to it that way, so that it reads the paper's four levels.
        channels = list(self.encoder.out_channels)
        channels[1] = 0
        self.decoder = SegformerDecoder(
            encoder_channels=channels,
            encoder_depth=MAX_DEPTH,
            segmentation_channels=decoder_channels,
        )
        self.head = Classifier(decoder_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        features[1] = features[1][:, :0]  # no channels: not read (see __init__)
        return upsample_to(self.head(self.decoder(features)), images)  # from stride 4
