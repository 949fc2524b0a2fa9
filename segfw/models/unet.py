"""UNet (Ronneberger et al., 2015): SMP's, a five-level encoder with a skip at every level."""

from __future__ import annotations

from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segfw.errors import ConfigError
from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork


class Unet(SegmentationNetwork):
    """SMP's Unet: five decoder blocks, each doubling the resolution and fusing one skip.

    Args:
        backbone: the backbone's table entry.
        num_classes: number of output classes.
        decoder_channels: width of each decoder block, from the deepest level up. The default is
            the paper's (and SMP's); narrower blocks make a much cheaper network where the
            decoder dominates the cost (small inputs, mobile backbones).

    Raises:
        ConfigError: ``decoder_channels`` is not five positive widths.
    """

    input_divisor = 32  # five halvings

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        widths = list(decoder_channels)
        if len(widths) != 5 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ConfigError(
                f"model.decoder_channels={widths} must be five positive widths, one per decoder "
                f"block from the deepest up, e.g. [256, 128, 64, 32, 16]."
            )
        self.net = smp.Unet(
            backbone.encoder, encoder_weights=None, classes=num_classes, decoder_channels=widths
        )

    @property
    def encoder(self) -> nn.Module:
        # A property, not a second registered child: the encoder's weights appear once in the
        # state dict, under net.encoder.
        return self.net.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
