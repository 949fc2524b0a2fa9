"""Architectures that segmentation_models_pytorch implements as the papers describe them."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from segfw.errors import ConfigError
from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork


class SmpNetwork(SegmentationNetwork):
    """Wraps an SMP model: its ``encoder`` is what backbone weights are loaded into."""

    def __init__(self, net: smp.base.SegmentationModel, input_divisor: int) -> None:
        super().__init__()
        self.net = net
        self.encoder = net.encoder
        self.input_divisor = input_divisor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def build_unet(backbone: Backbone, num_classes: int) -> SmpNetwork:
    """UNet (Ronneberger et al., 2015): a five-level encoder with skip connections."""
    net = smp.Unet(backbone.encoder, encoder_weights=None, classes=num_classes)
    return SmpNetwork(net, input_divisor=32)


# DeepLabv3+ (Chen et al., 2018): the ASPP atrous rates scale inversely with the output stride.
ATROUS_RATES = {8: (12, 24, 36), 16: (6, 12, 18)}


def build_deeplabv3plus(backbone: Backbone, num_classes: int, output_stride: int = 8) -> SmpNetwork:
    """DeepLabv3+ with a dilated encoder of the given output stride (8 or 16)."""
    if output_stride not in ATROUS_RATES:
        raise ConfigError(
            f"model.output_stride={output_stride} is not supported by DeepLabv3+; "
            f"choose one of {sorted(ATROUS_RATES)}."
        )
    net = smp.DeepLabV3Plus(
        backbone.encoder,
        encoder_weights=None,
        encoder_output_stride=output_stride,
        decoder_atrous_rates=ATROUS_RATES[output_stride],
        classes=num_classes,
    )
    # The decoder fuses stride-4 features with the ASPP output; the encoder itself checks that
    # the input divides its deepest stride.
    return SmpNetwork(net, input_divisor=output_stride)
