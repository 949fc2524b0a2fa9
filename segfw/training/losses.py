"""Training losses, built from the ``loss`` config.

Every loss leaves ``ignore_index`` pixels out, and a batch with no labelled pixel counts as a zero
loss (finite, with zero gradients) rather than 0 / 0 = NaN, which would stop training as a
divergence. Cross-entropy, Dice and focal run on the device without reading anything back to the
host, so a training step gains no synchronization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import nn
from torch.nn import functional as F

from segfw.choices import check_arguments, choose
from segfw.errors import ConfigError


class WeightedSum(nn.Module):
    """``sum(weight * loss)`` over several losses, e.g. cross-entropy + Dice."""

    def __init__(self, terms: Sequence[tuple[nn.Module, float]]) -> None:
        super().__init__()
        self.losses = nn.ModuleList(loss for loss, _ in terms)
        self.weights = [weight for _, weight in terms]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(
            w * loss(logits, target) for loss, w in zip(self.losses, self.weights, strict=True)
        )


def median_frequency_weights(
    class_pixels: Sequence[int] | np.ndarray, image_pixels: Sequence[int] | np.ndarray
) -> list[float]:
    """Class weights by median-frequency balancing (Eigen & Fergus, ICCV 2015).

    ``freq[c] = class_pixels[c] / image_pixels[c]``: the share of class ``c`` among the labelled
    pixels of the images in which it occurs; ``weight[c] = median(freq) / freq[c]``, the median
    taken over the classes that occur. A class of median frequency weighs 1, rarer classes more.
    A class that never occurs gets 0: it has no pixel for a weight to act on.

    Args:
        class_pixels: pixels of each class over the training masks.
        image_pixels: labelled (not ignored) pixels of the training masks in which each class
            occurs.

    Returns:
        One weight per class, rounded to 6 significant digits (they are written into configs).
    """
    pixels = np.asarray(class_pixels, np.float64)
    frequency = np.divide(
        pixels, image_pixels, out=np.zeros_like(pixels), where=np.asarray(image_pixels) > 0
    )
    present = frequency > 0
    if not present.any():
        raise ConfigError(
            "loss.class_weights=auto: the training masks hold no labelled pixel to measure."
        )
    median = np.median(frequency[present])
    weights = np.divide(median, frequency, out=np.zeros_like(frequency), where=present)
    return [float(f"{w:.6g}") for w in weights]


def _class_weights(weights: Sequence[float] | str | None, num_classes: int) -> torch.Tensor | None:
    if weights is None:
        return None
    if isinstance(weights, str):
        raise ConfigError(
            f"loss.class_weights={weights!r}: give one number per class, or auto, which "
            f"train.py (and segfw.train) resolve from the training masks before building the model."
        )
    if len(weights) != num_classes or min(weights) < 0:
        raise ConfigError(
            f"loss.class_weights={list(weights)} must hold {num_classes} non-negative numbers, "
            f"one per class."
        )
    return torch.tensor(weights, dtype=torch.float32)


def _mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``, and 0 where ``count`` is 0: a batch with no pixel to learn from.

    The count is replaced where it is 0, on the device: a host-side check would cost a
    synchronization every training step. ``total`` is then 0 too, with its graph kept, so backward
    gives zero gradients. ``count`` never depends on the logits, so replacing it moves no gradient.
    """
    return total / torch.where(count > 0, count, torch.ones_like(count))


def _one_hot(target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Boolean (N, C, ...) labels: ``[c, pixel]`` is set where the pixel is labelled ``c``.

    Ignored pixels are all False. Built by comparison rather than ``F.one_hot``, which reads the
    largest label back to the host (a synchronization on GPU) and holds int64 (8 bytes a value).
    """
    shape = (1, num_classes) + (1,) * (target.dim() - 1)
    classes = torch.arange(num_classes, device=target.device).view(shape)
    labels = target.unsqueeze(1)
    return (labels == classes) & (labels != ignore_index)


class CrossEntropy(nn.Module):
    """Cross-entropy over the labelled pixels: ``sum(w[y] * nll) / sum(w[y])``.

    Equal to ``nn.CrossEntropyLoss(weight, ignore_index=ignore_index)`` wherever that is defined;
    0 where it gives 0 / 0 = NaN: a batch with no labelled pixel, or whose labelled pixels all
    belong to classes of weight 0.

    Args:
        ignore_index: label of the pixels left out.
        weight: one weight per class; ``None``: all 1.
    """

    weight: torch.Tensor | None  # a buffer

    def __init__(self, ignore_index: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        # A buffer under nn.CrossEntropyLoss's name, so that checkpoints written before still load.
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Per-pixel losses, summed in float32: a 16-bit sum over a whole batch drifts by percents.
        total = F.cross_entropy(
            logits, target, self.weight, ignore_index=self.ignore_index, reduction="none"
        ).sum(dtype=torch.float32)
        labelled = target != self.ignore_index
        if self.weight is None:
            return _mean(total, labelled.sum())
        # Ignored pixels look up class 0, then count for nothing.
        pixel_weights = self.weight[torch.where(labelled, target, 0)]
        return _mean(total, torch.where(labelled, pixel_weights, 0).sum(dtype=torch.float32))


class Dice(nn.Module):
    """Soft Dice loss (Milletari et al., 2016), averaged over the classes present in the batch.

    For each class ``c``, over the labelled pixels of the whole batch (ignored pixels are left out
    of both prediction and labels): ``I = sum(p_c * [y = c])``, ``P = sum(p_c)``,
    ``T = sum([y = c])``, with ``p`` the softmax, and
    ``dice_c = (I + smooth) / max((P + T) / 2 + smooth, eps)`` (SMP 0.6's ``DiceLoss`` formula,
    so ``smooth`` keeps the meaning it had there). The loss is the mean of ``1 - dice_c`` over the
    classes with ``T > 0``; 0 for a batch with no labelled pixel.

    A class predicted but absent from the labels adds no term, as in SMP and unlike
    mmsegmentation, which averages over all classes: with many classes (ADE20K: 150) such terms
    would outnumber the present ones and set the loss's scale by how many classes a batch lacks.
    Nothing is left unpenalized: the softmax sums to 1, so a pixel's probability on an absent class
    is missing from its labelled class's ``I``, and that class's Dice drops.

    Args:
        ignore_index: label of the pixels left out.
        smooth: added to the numerator and to the denominator; 0 gives the plain Dice.
        eps: the smallest denominator: a class neither labelled nor predicted (0 / 0) adds no
            term, but would still put NaN into the gradients.
    """

    def __init__(self, ignore_index: int, smooth: float = 0.0, eps: float = 1e-7) -> None:
        super().__init__()
        self.ignore_index, self.smooth, self.eps = ignore_index, smooth, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 whatever the training precision: the sums run over every pixel of the batch.
        probabilities = logits.float().softmax(1)
        labels = _one_hot(target, logits.size(1), self.ignore_index)
        labelled = (target != self.ignore_index).unsqueeze(1)
        dims = (0, *range(2, logits.dim()))  # all but the class dimension
        intersection = (probabilities * labels).sum(dims)
        predicted = (probabilities * labelled).sum(dims)
        labelled_pixels = labels.sum(dims)
        dice = (intersection + self.smooth) / (
            (predicted + labelled_pixels) / 2 + self.smooth
        ).clamp_min(self.eps)
        present = labelled_pixels > 0
        return _mean(torch.where(present, 1 - dice, 0).sum(), present.sum())


class Focal(nn.Module):
    """Focal loss (Lin et al., 2017), one class against the rest, as SMP's
    ``FocalLoss("multiclass")`` computes it.

    Per pixel and class, the binary cross-entropy of the sigmoid ``b = BCE(x_c, [y = c])``, scaled
    by ``(1 - exp(-b)) ** gamma``; the loss is the mean over labelled pixels and classes (SMP's
    mean over classes of each class's mean over labelled pixels), 0 for a batch with no labelled
    pixel.

    Args:
        ignore_index: label of the pixels left out.
        gamma: focusing power; 0 gives the plain one-vs-rest binary cross-entropy.
    """

    def __init__(self, ignore_index: int, gamma: float = 2.0) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = _one_hot(target, logits.size(1), self.ignore_index).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        focal = (1 - torch.exp(-bce)).pow(self.gamma) * bce
        labelled = (target != self.ignore_index).unsqueeze(1)
        total = torch.where(labelled, focal, 0).sum(dtype=torch.float32)  # as in CrossEntropy
        return _mean(total, labelled.sum() * logits.size(1))


class Lovasz(nn.Module):
    """Lovász-softmax (Berman et al., 2018) through SMP's ``LovaszLoss("multiclass")``: the mean
    over the classes present of the Lovász extension of each class's Jaccard loss.

    ``per_image`` averages the loss of each image that holds a labelled pixel; a batch with none
    gives 0 (SMP returns an empty tensor there, and with ``per_image`` one such image empties the
    whole batch's loss).

    Args:
        ignore_index: label of the pixels left out.
        per_image: one loss per image, averaged, instead of one over the whole batch.
    """

    def __init__(self, ignore_index: int, per_image: bool = False) -> None:
        super().__init__()
        self.ignore_index, self.per_image = ignore_index, per_image
        self.lovasz = smp_losses.LovaszLoss("multiclass", ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Read on the host: Lovász-softmax sorts each class's errors, and SMP selects labelled
        # pixels and present classes on the host, so a step already waits for the device here.
        labelled = (target != self.ignore_index).flatten(1).any(1).tolist()
        if self.per_image:
            parts = [
                (logits[i : i + 1], target[i : i + 1]) for i, has in enumerate(labelled) if has
            ]
        else:
            parts = [(logits, target)] if any(labelled) else []
        if not parts:
            return logits.sum() * 0.0  # a zero that backward accepts, with zero gradients
        # float32: SMP's Lovász gradient is float32, and torch.dot refuses to mix it with 16 bits.
        losses = [self.lovasz(part.float(), labels) for part, labels in parts]
        return torch.stack(losses).mean()


def _ce(num_classes: int, ignore_index: int, class_weights: Sequence[float] | None = None):
    return CrossEntropy(ignore_index, _class_weights(class_weights, num_classes))


def _dice(num_classes: int, ignore_index: int, smooth: float = 0.0):
    return Dice(ignore_index, smooth)


def _ce_dice(
    num_classes: int,
    ignore_index: int,
    class_weights: Sequence[float] | None = None,
    ce_weight: float = 1.0,
    dice_weight: float = 1.0,
):
    return WeightedSum(
        [
            (_ce(num_classes, ignore_index, class_weights), ce_weight),
            (_dice(num_classes, ignore_index), dice_weight),
        ]
    )


def _focal(num_classes: int, ignore_index: int, gamma: float = 2.0):
    return Focal(ignore_index, gamma)


def _lovasz(num_classes: int, ignore_index: int, per_image: bool = False):
    return Lovasz(ignore_index, per_image)


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": _ce,
    "dice": _dice,
    "ce_dice": _ce_dice,
    "focal": _focal,
    "lovasz": _lovasz,
}


def build_loss(config: dict, num_classes: int, ignore_index: int) -> nn.Module:
    """Builds the loss that ``config`` (``name`` plus that loss's own keys) describes.

    Raises:
        ConfigError: unknown loss name or setting, or bad class weights.
    """
    args = dict(config)
    build = choose(LOSSES, args.pop("name", None), "loss.name")
    check_arguments(build, args, "loss", skip=2)
    return build(num_classes, ignore_index, **args)
