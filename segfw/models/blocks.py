"""Small building blocks shared by the architectures segfw owns."""

from __future__ import annotations

from torch import nn


class ConvBNReLU(nn.Sequential):
    """Convolution with "same" padding, BatchNorm, ReLU; no bias, since BatchNorm re-centres."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
