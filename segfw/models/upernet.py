"""UPerNet (Xiao et al., 2018): a pyramid pooling module on the deepest level and a feature
pyramid over the levels at strides 4 to 32, fused at stride 4; the head that ConvNeXt and Swin
were benchmarked with on ADE20K."""

from __future__ import annotations

import torch
from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder

from segfw.models.backbones import Backbone
from segfw.models.base import AuxiliaryLossNetwork, checked_aux_weight, checked_width
from segfw.models.blocks import AuxiliaryHead, Classifier
from segfw.models.encoders import MAX_DEPTH, build_encoder


class UPerNet(AuxiliaryLossNetwork):
    """UPerNet's decoder (SMP's) on any backbone or generic encoder.

    The levels at strides 4 to 32 are each layer-normalized (as the ConvNeXt and Swin backbones
    of mmsegmentation normalize their outputs); the deepest goes through pyramid pooling (bins 1,
    2, 3, 6, each a 1 x 1 conv-BN-ReLU, concatenated with it, fused by a 3 x 3 conv-BN-ReLU); a
    top-down feature pyramid adds each shallower level through a 1 x 1 conv-BN-ReLU and refines
    it with a 3 x 3 one; the four pyramid levels, up-sampled to stride 4 and concatenated, are
    fused by a 3 x 3 conv-BN-ReLU. Dropout 0.1 and a 1 x 1 classifier follow, up-sampled to the
    input's size. While training, an auxiliary head on the second-deepest level (stride 16) adds
    its loss, as mmsegmentation's UPerNet configs do.

    Args:
        backbone: the backbone.
        num_classes: number of output classes.
        decoder_channels: the width of every decoder convolution: 512 in mmsegmentation's UPerNet,
            with which ConvNeXt's and Swin's authors published theirs.
        aux_weight: weight of the auxiliary head's loss (mmsegmentation's 0.4); 0 builds no
            auxiliary head.
    """

    input_divisor = 32

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        decoder_channels: int = 512,
        aux_weight: float = 0.4,
    ) -> None:
        super().__init__()
        checked_width(decoder_channels, "model.decoder_channels", "512 in the published UPerNets")
        self.aux_weight = checked_aux_weight(aux_weight)
        self.encoder = build_encoder(backbone, needed_by="model=upernet")
        channels = self.encoder.out_channels
        self.decoder = UPerNetDecoder(
            encoder_channels=channels, encoder_depth=MAX_DEPTH, decoder_channels=decoder_channels
        )
        self.head = Classifier(decoder_channels, num_classes)
        self.aux_head = AuxiliaryHead(channels[-2], num_classes) if self.aux_weight else None

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(self.decoder(features))  # at stride 4
