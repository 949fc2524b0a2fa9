"""DeepLabv3+ (Chen et al., 2018): a dilated encoder, atrous spatial pyramid pooling (ASPP), and a
decoder that refines the ASPP output with the encoder's stride-4 features."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from torch import nn

from segfw.choices import choose
from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork
from segfw.models.blocks import upsample_to
from segfw.models.encoders import MAX_DEPTH, build_encoder

# The ASPP's atrous rates scale inversely with the output stride (the paper: 6/12/18 at 16).
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}
DECODER_CHANNELS = 256  # the paper's ASPP and decoder width


class DeepLabV3Plus(SegmentationNetwork):
    """DeepLabv3+ on any backbone, its encoder dilated by segfw's à-trous routine (timm's own
    dilation for a generic encoder that has one).

    SMP's decoder is the paper's (and the Keras reference's): ASPP with depthwise-separable
    convolutions, stride-4 features projected to 48 channels, a separable 3 x 3 fusion.

    Args:
        backbone: the backbone.
        num_classes: number of output classes.
        output_stride: input size / the encoder's deepest feature size: 8 or 16.
    """

    def __init__(self, backbone: Backbone, num_classes: int, output_stride: int = 8) -> None:
        super().__init__()
        choose(
            ATROUS_RATES,
            output_stride,
            "model.output_stride",
            "DeepLabv3+ defines its atrous rates and its x4 / x2 decoder up-sampling for these "
            "output strides",
        )
        self.input_divisor = output_stride
        self.encoder = build_encoder(
            backbone,
            output_stride=output_stride,
            needed_by=f"model=deeplabv3plus with model.output_stride={output_stride}",
        )
        self.decoder = DeepLabV3PlusDecoder(
            encoder_channels=self.encoder.out_channels,
            encoder_depth=MAX_DEPTH,
            out_channels=DECODER_CHANNELS,
            atrous_rates=ATROUS_RATES[output_stride],
            output_stride=output_stride,
            aspp_separable=True,
            aspp_dropout=0.5,
        )
        self.head = nn.Conv2d(DECODER_CHANNELS, num_classes, kernel_size=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.head(self.decoder(self.encoder(images))), images)  # from stride 4
