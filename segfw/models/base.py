"""The interface every segfw network implements, whatever its architecture."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from segfw.errors import ConfigError
from segfw.models.blocks import upsample_to
from segfw.models.encoders import Encoder


class TrainingOutputs(NamedTuple):
    """What a network returns while training.

    Attributes:
        logits: the prediction, (N, num_classes, H, W), as ``forward`` would return it.
        loss_terms: (logits, weight) pairs; the training loss is the weighted sum of the loss of
            each. A plain network has one term, the prediction itself; deep supervision and
            auxiliary heads add theirs.
    """

    logits: torch.Tensor
    loss_terms: list[tuple[torch.Tensor, float]]


class SegmentationNetwork(nn.Module):
    """Base class: maps a normalized image batch (N, 3, H, W) to logits (N, num_classes, H, W).

    Subclasses set ``input_divisor``: the input height and width must be multiples of it.
    """

    input_divisor: int = 32

    def training_outputs(self, images: torch.Tensor) -> TrainingOutputs:
        logits = self(images)
        return TrainingOutputs(logits, [(logits, 1.0)])


class AuxiliaryLossNetwork(SegmentationNetwork):
    """A network that, while training, adds the loss of an auxiliary head on the encoder's
    second-deepest level (PSPNet, UPerNet).

    Subclasses set ``encoder``, ``aux_head`` (None: no auxiliary loss) and ``aux_weight``, and
    implement ``decode``; the logits of both heads are up-sampled to the input's size.
    """

    encoder: Encoder
    aux_head: nn.Module | None
    aux_weight: float

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The logits, at some stride, from the encoder's levels."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return upsample_to(self.decode(self.encoder(images)), images)

    def training_outputs(self, images: torch.Tensor) -> TrainingOutputs:
        if self.aux_head is None:
            return super().training_outputs(images)
        features = self.encoder(images)
        logits = upsample_to(self.decode(features), images)
        aux_logits = upsample_to(self.aux_head(features[-2]), images)
        return TrainingOutputs(logits, [(logits, 1.0), (aux_logits, self.aux_weight)])


def checked_aux_weight(aux_weight: object) -> float:
    """``model.aux_weight`` as a float.

    Raises:
        ConfigError: it is not a number >= 0.
    """
    if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
        raise ConfigError(
            f"model.aux_weight={aux_weight!r} is not a weight: give a number >= 0 "
            f"(the paper: 0.4; 0 builds no auxiliary head)."
        )
    return float(aux_weight)


def checked_width(width: object, key: str, default: str) -> int:
    """A layer width from the config.

    Args:
        width: the value given.
        key: its config key, for the message.
        default: the paper's value, for the message.

    Raises:
        ConfigError: it is not a positive integer.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"{key}={width!r} is not a width: give a positive integer ({default}).")
    return width
