"""UNet (Ronneberger et al., 2015): SMP's decoder on a five-level encoder, a skip at every level."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from segmentation_models_pytorch.base import initialization
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from segfw.errors import ConfigError
from segfw.models.backbones import Backbone
from segfw.models.base import SegmentationNetwork
from segfw.models.encoders import MAX_DEPTH, build_encoder, level_zero_is_image

# Checkpoints written before segfw's Unet held its parts directly nested ``smp.Unet`` as ``net``:
# its keys, relative to the Unet, -> today's.
LEGACY_PREFIXES = {
    "net.encoder.": "encoder.",
    "net.decoder.": "decoder.",
    "net.segmentation_head.0.": "head.",
}


class Unet(SegmentationNetwork):
    """SMP's Unet decoder: five decoder blocks, each doubling the resolution and fusing one skip,
    then a 3 x 3 classifier; computed exactly as ``smp.Unet`` computes it.

    On an encoder whose first level is at stride 4 (ConvNeXt, Mix Transformer) the stride-2
    block has no skip to fuse and up-samples only, as SMP's Unet does.

    Args:
        backbone: the backbone.
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
        self.encoder = build_encoder(backbone, needed_by="model=unet")
        self.decoder = UnetDecoder(
            encoder_channels=self.encoder.out_channels,
            decoder_channels=widths,
            n_blocks=MAX_DEPTH,
            # smp.Unet's: VGG's deepest level comes straight from a max-pool, with no
            # convolution at that stride before the decoder's.
            add_center_block=not level_zero_is_image(self.encoder),
        )
        self.head = nn.Conv2d(widths[-1], num_classes, kernel_size=3, padding=1)
        initialization.initialize_decoder(self.decoder)
        initialization.initialize_head(self.head)
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(images)))


def upgrade_legacy_keys(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``state`` with the keys of a Unet under ``prefix`` in today's layout.

    Args:
        state: a state dict holding a Unet's entries, in either layout.
        prefix: the Unet's place in it (``""`` for the Unet's own, ``"net."`` in a
            SegmentationModule's checkpoint).
    """

    def upgraded(key: str) -> str:
        for old, new in LEGACY_PREFIXES.items():
            if key.startswith(prefix + old):
                return prefix + new + key.removeprefix(prefix + old)
        return key

    return {upgraded(key): value for key, value in state.items()}


def _upgrade_legacy_keys(
    module: nn.Module, state: dict[str, Any], prefix: str, *args: object
) -> None:
    """``load_state_dict`` pre-hook: renames a legacy layout's keys, in place."""
    upgraded = upgrade_legacy_keys(state, prefix)
    state.clear()
    state.update(upgraded)
