"""Small building blocks shared by the architectures segfw owns."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AUX_CHANNELS = 256  # the auxiliary head's width: PSPNet's, and mmsegmentation's FCN head's
DROPOUT = 0.1  # before each classifier: PSPNet's, UPerNet's and SegFormer's (mmsegmentation's)


class ConvBNReLU(nn.Sequential):
    """Convolution with "same" padding, BatchNorm, ReLU; no bias, since BatchNorm re-centres."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Classifier(nn.Sequential):
    """Dropout, then a 1 x 1 convolution to the class logits: the classifier of PSPNet, UPerNet
    and SegFormer (mmsegmentation's ``cls_seg``)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(nn.Dropout2d(DROPOUT), nn.Conv2d(in_channels, num_classes, kernel_size=1))


class AuxiliaryHead(nn.Sequential):
    """A classifier on an intermediate level, for a training loss only: a 3 x 3 conv-BN-ReLU to
    256 channels, dropout, a 1 x 1 classifier (PSPNet's, and the FCN head that mmsegmentation's
    UPerNet configs train with)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, AUX_CHANNELS),
            nn.Dropout2d(DROPOUT),
            nn.Conv2d(AUX_CHANNELS, num_classes, kernel_size=1),
        )


def upsample_to(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``logits`` resized bilinearly to the height and width of ``images``."""
    return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
