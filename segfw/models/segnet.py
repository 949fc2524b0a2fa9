"""SegNet (Badrinarayanan et al., 2017): an encoder and a decoder that mirrors it, up-sampling with
the encoder's max-pooling indices. SMP has no SegNet; this one works on every backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders.vgg import VGGEncoder
from torch import nn

from segfw.choices import choose
from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork
from segfw.models.blocks import ConvBNReLU
from segfw.models.encoders import (
    MAX_DEPTH,
    Layer,
    build_encoder,
    level_zero_is_image,
    remove_unused,
    trace_layers,
)

UPSAMPLE_LAYERS = range(2, MAX_DEPTH + 1)  # the original library's 2..5


class IndexedMaxPool2d(nn.MaxPool2d):
    """A max-pool that remembers where each maximum came from, for the decoder's unpooling.

    It takes an encoder's ``nn.MaxPool2d``'s place; having no parameters, it leaves the state dict
    and the ImageNet weights as they were. Each forward keeps the indices and the input size until
    the decoder takes them.
    """

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
        self.switches: tuple[torch.Tensor, torch.Size] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = F.max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, True
        )
        self.switches = (indices, x.shape[-2:])
        return values


class MaxUnpool(nn.Module):
    """Doubles the resolution by putting each value where its encoder pool found the maximum.

    A scatter-add over each channel's plane rather than ``F.max_unpool2d``: where two overlapping
    windows (the ResNet stem's 3 x 3 pools of stride 2) chose the same pixel, it receives the sum
    of both values, deterministically and with an exact gradient, where ``max_unpool2d`` keeps an
    arbitrary one; and it traces for TorchScript and ONNX at any input size.
    """

    def __init__(self, pool: IndexedMaxPool2d) -> None:
        super().__init__()
        self.pool = pool  # the encoder's own module; without parameters, nothing is saved twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        switches = self.pool.switches
        if switches is None:
            raise RuntimeError(
                "MaxUnpool ran before its encoder pool: the network's forward calls the encoder "
                "first, which records where each maximum came from."
            )
        indices, (height, width) = switches
        self.pool.switches = None  # let them go: the next forward pass records its own
        n, c = x.shape[:2]
        planes = x.new_zeros(n, c, height * width)
        return planes.scatter_add(2, indices.flatten(2), x.flatten(2)).view(n, c, height, width)


class SegNet(SegmentationNetwork):
    """SegNet on any backbone or generic encoder; the output is always at the input's full
    resolution.

    The encoder stops at level ``n = num_upsample_layers``, stride ``2**n`` (everything the
    backbone computes at that stride). The decoder undoes the n halvings from the deepest: at
    each stride it mirrors the convolutions the encoder ran there, then doubles the resolution,
    by max-unpooling with the encoder's own indices where the encoder halved by max-pooling
    (every VGG stage, the ResNet stem), by a learned per-channel 2 x 2 transposed convolution
    elsewhere (strided convolutions, and the missing stride-2 level of an encoder whose first
    level is at stride 4). A 3 x 3 convolution classifies the full-resolution features.

    The mirror, on VGG, is the paper's: the encoder's convolutions at that stride in reverse
    order, each with its input and output channels swapped (conv-BN-ReLU), the mirror of the
    image's convolution being the classifier. The other backbones run dozens of convolutions per
    stride in residual blocks; their mirror at each level is a 1 x 1 conv-BN-ReLU down to the
    channels of the level above and a 3 x 3 conv-BN-ReLU at that width, and the full-resolution
    level (where their encoder has no convolution) gets one 3 x 3 conv-BN-ReLU at the stem's
    width (the width of the first level with features: 4's, on a stride-4 encoder, for level 1
    as well).

    Args:
        backbone: the backbone.
        num_classes: number of output classes.
        num_upsample_layers: n, the number of halvings the decoder undoes: 2 to 5.
    """

    def __init__(self, backbone: Backbone, num_classes: int, num_upsample_layers: int = 3) -> None:
        super().__init__()
        choose(
            UPSAMPLE_LAYERS,
            num_upsample_layers,
            "model.num_upsample_layers",
            "SegNet's decoder undoes that many of the encoder's five halvings",
        )
        depth = num_upsample_layers
        self.input_divisor = 2**depth
        self.encoder = build_encoder(
            backbone, depth, needed_by=f"model=segnet with model.num_upsample_layers={depth}"
        )
        # SegNet reads the deepest level only; an encoder of parallel branches (HRNet) computes
        # the shallower ones partly apart from it.
        remove_unused(self.encoder, levels=[depth])
        layers = trace_layers(self.encoder)
        channels = list(self.encoder.out_channels)  # the decoder's width at each level
        if isinstance(self.encoder, VGGEncoder):
            mirrors = _vgg_mirrors(layers, depth)
        else:
            # Levels without features of their own (the image, a stride-4 encoder's missing
            # level 1) take the width of the first level that has some.
            first = 1 if level_zero_is_image(self.encoder) else 0
            if channels[first] == 0:
                first += 1
            channels[:first] = [channels[first]] * first
            mirrors = _block_mirrors(channels, depth)

        # The halving into level j (stride 2**(j-1) -> 2**j) -> the max-pool that did it.
        pools = {}
        for layer in layers:
            # Exactly nn.MaxPool2d: a subclass (timm's MaxPool2dSame) pads in ways unpooling
            # would have to know; those halvings are learned instead.
            if type(layer.module) is nn.MaxPool2d and layer.out_stride > layer.in_stride:
                pools[layer.out_stride.bit_length() - 1] = pool = IndexedMaxPool2d(layer.module)
                _replace_module(self.encoder, layer.module, pool)
        stages = []
        for level in range(depth, 0, -1):
            up: nn.Module
            if level in pools:
                up = MaxUnpool(pools[level])
            else:
                # Per channel, like unpooling: a learned 2 x 2 kernel spreads each value over the
                # four pixels it came from; the convolutions that follow mix the channels.
                width = channels[level - 1]
                up = nn.ConvTranspose2d(width, width, kernel_size=2, stride=2, groups=width)
            stages.append(nn.Sequential(*mirrors[level], up))
        self.decoder = nn.Sequential(*stages, *mirrors[0])
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(images)[-1]))


def _vgg_mirrors(layers: list[Layer], depth: int) -> list[list[ConvBNReLU]]:
    """Per level, the transposes of the encoder's convolutions at that stride, last first."""
    mirrors = [
        [
            ConvBNReLU(layer.module.out_channels, layer.module.in_channels)
            for layer in reversed(layers)
            if isinstance(layer.module, nn.Conv2d) and layer.in_stride == 2**level
        ]
        for level in range(depth + 1)
    ]
    mirrors[0].pop()  # the transpose of the convolution on the image: the classifier instead
    return mirrors


def _block_mirrors(channels: list[int], depth: int) -> list[list[ConvBNReLU]]:
    """Per level, a 1 x 1 and a 3 x 3 conv-BN-ReLU to the level above's width; one 3 x 3 at full
    resolution."""
    return [[ConvBNReLU(channels[0], channels[0])]] + [
        [
            ConvBNReLU(channels[level], channels[level - 1], kernel_size=1),
            ConvBNReLU(channels[level - 1], channels[level - 1]),
        ]
        for level in range(1, depth + 1)
    ]


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in root.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)
