"""UNet++ (Zhou et al., 2018): nested decoders with dense skips on an encoder, deep supervision and
pruning. SMP's UnetPlusPlus has no deep supervision (its issues #312, #707, #850); this one does."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segfw.choices import choose
from segfw.errors import ConfigError
from segfw.models.backbones import LISTING_HINT, Backbone
from segfw.models.base import SegmentationNetwork, TrainingOutputs
from segfw.models.blocks import ConvBNReLU
from segfw.models.encoders import (
    MAX_DEPTH,
    build_encoder,
    level_zero_is_image,
    pyramid_strides,
)

UPSAMPLE_LAYERS = range(1, MAX_DEPTH + 1)


class UnetPlusPlus(SegmentationNetwork):
    """UNet++ on any backbone, and on any generic encoder with a stride-2 level.

    Node X(i, j) sits at row i (stride ``2**i``), column j. Column 0 is the encoder's level i;
    every other node is two 3 x 3 conv-BN-ReLU of ``filters[i]`` channels over the concatenation
    of all nodes to its left in the same row and the up-sampled X(i+1, j-1). Rows 0 to n-1 hold
    nested nodes, so ``filters`` needs n entries. Where the encoder's level 0 is the image (all
    backbones but VGG) it joins no skip, as in SMP's Unet.

    With deep supervision a 1 x 1 head classifies each X(0, j), j = 1..n: the training loss is
    the mean of the heads' losses, the prediction the mean of their logits. ``prune_level`` k
    predicts with head k alone and computes only the nodes it depends on (i + j <= k): the
    paper's pruned UNet++ L^k, faster at inference. Training still supervises every head, so
    the pruned prediction is exactly head k of the network that was trained. The encoder runs to
    level n either way.

    Args:
        backbone: the backbone.
        num_classes: number of output classes.
        num_upsample_layers: n, the depth of the nested decoders: 1 to 5.
        filters: channels of the nested nodes of each row, from row 0 (full resolution); the
            first n are used.
        deep_supervision: a head on every X(0, j) rather than on X(0, n) alone.
        prune_level: None, or the head k (1..n) that predicts alone; needs deep supervision.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        num_upsample_layers: int = 3,
        filters: Sequence[int] = (64, 128, 256, 512, 1024),
        deep_supervision: bool = True,
        prune_level: int | None = None,
    ) -> None:
        super().__init__()
        choose(
            UPSAMPLE_LAYERS,
            num_upsample_layers,
            "model.num_upsample_layers",
            "UNet++ nests decoders over at most the encoder's five levels",
        )
        depth = num_upsample_layers
        filters = _check_filters(filters, depth)
        if not isinstance(deep_supervision, bool):
            raise ConfigError(f"model.deep_supervision={deep_supervision!r}: give true or false.")
        if prune_level is not None:
            if not deep_supervision:
                raise ConfigError(
                    f"model.prune_level={prune_level!r} needs model.deep_supervision=true: only "
                    f"then is there a head at each level to predict with. Set "
                    f"model.prune_level=null, or model.deep_supervision=true."
                )
            choose(
                range(1, depth + 1),
                prune_level,
                "model.prune_level",
                f"with num_upsample_layers={depth} there are heads 1 to {depth} (or null: all)",
            )
        self.depth, self.deep_supervision, self.prune_level = depth, deep_supervision, prune_level
        self.input_divisor = 2**depth
        if backbone.generic and pyramid_strides(backbone)[0] == 4:
            raise ConfigError(
                f"model=unetpp cannot run on backbone.encoder={backbone.label}: its first level "
                f"is at stride 4, and UNet++ nests its decoders from the stride-2 level up (node "
                f"X(0, 1) fuses that level). Choose model=unet (which up-samples across the "
                f"missing level), model=upernet or model=segformer, or an encoder with a stride-2 "
                f"level such as efficientnet_b0 or resnet50d ({LISTING_HINT})."
            )
        self.encoder = build_encoder(
            backbone, depth, needed_by=f"model=unetpp with model.num_upsample_layers={depth}"
        )
        self.skip_image = level_zero_is_image(self.encoder)
        encoded = list(self.encoder.out_channels)
        if self.skip_image:
            encoded[0] = 0

        self.nodes = nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                below = encoded[i + 1] if j == 1 else filters[i + 1]
                in_channels = encoded[i] + (j - 1) * filters[i] + below
                self.nodes[f"{i}_{j}"] = nn.Sequential(
                    ConvBNReLU(in_channels, filters[i]), ConvBNReLU(filters[i], filters[i])
                )
        columns = range(1, depth + 1) if deep_supervision else [depth]
        self.heads = nn.ModuleDict(
            {str(j): nn.Conv2d(filters[0], num_classes, kernel_size=1) for j in columns}
        )

    def head_logits(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The logits of every head of the whole network, from X(0, 1) on (X(0, n) alone
        without deep supervision)."""
        columns = self._nested(images, self.depth)
        return [head(columns[int(j) - 1]) for j, head in self.heads.items()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.prune_level is not None:
            columns = self._nested(images, self.prune_level)
            return self.heads[str(self.prune_level)](columns[-1])
        logits = self.head_logits(images)
        return torch.stack(logits).mean(0) if self.deep_supervision else logits[0]

    def training_outputs(self, images: torch.Tensor) -> TrainingOutputs:
        logits = self.head_logits(images)
        if self.prune_level is not None:
            prediction = logits[self.prune_level - 1]
        else:
            prediction = torch.stack(logits).mean(0)
        return TrainingOutputs(prediction, [(head, 1 / len(logits)) for head in logits])

    def _nested(self, images: torch.Tensor, level: int) -> list[torch.Tensor]:
        """X(0, 1) ... X(0, level), computing the nodes with i + j <= level only."""
        features = self.encoder(images)
        rows: list[list[torch.Tensor]] = [
            [] if i == 0 and self.skip_image else [features[i]] for i in range(level + 1)
        ]
        for j in range(1, level + 1):
            for i in range(level - j + 1):
                below = F.interpolate(
                    rows[i + 1][-1], scale_factor=2, mode="bilinear", align_corners=False
                )
                rows[i].append(self.nodes[f"{i}_{j}"](torch.cat([*rows[i], below], dim=1)))
        return rows[0][-level:]


def _check_filters(filters: Sequence[int], depth: int) -> list[int]:
    if (
        not isinstance(filters, Sequence)
        or isinstance(filters, str)
        or not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters)
    ):
        raise ConfigError(
            f"model.filters={filters!r}: give a list of positive channel counts, one per nested "
            f"row (e.g. [64, 128, 256, 512, 1024])."
        )
    if len(filters) < depth:
        raise ConfigError(
            f"model.filters={list(filters)} is too short for num_upsample_layers={depth}: UNet++ "
            f"needs one channel count per nested row, rows 0 to {depth - 1}, so at least {depth} "
            f"entries (entries beyond are unused)."
        )
    return list(filters)
