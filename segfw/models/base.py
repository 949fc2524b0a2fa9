"""The interface every segfw network implements, whatever its architecture."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


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
