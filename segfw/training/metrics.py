"""Dataset-level segmentation metrics from one confusion matrix accumulated over an epoch.

Per-image averaging (torchmetrics' MeanIoU) and per-batch means are both biased for segmentation;
the standard (PASCAL VOC, Cityscapes, mmsegmentation) is one C x C confusion matrix over every
labelled pixel of the split, from which IoU, Dice and accuracy all follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn
from torchmetrics import Metric


class ConfusionMatrix(Metric):
    """Accumulates a confusion matrix (rows: ground truth, columns: prediction).

    ``update`` adds with ``scatter_add_`` into a spare bin for ignored pixels, so it never
    synchronizes with the host (boolean indexing would) and stays exact and deterministic on CPU and
    GPU, without the huge fallback that torchmetrics' bincount takes in deterministic mode.

    Args:
        num_classes: number of classes.
        ignore_index: ground-truth value whose pixels are left out.
    """

    full_state_update = False
    counts: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # One extra bin at the end collects ignored pixels and is dropped on compute.
        self.add_state(
            "counts", torch.zeros(num_classes * num_classes + 1, dtype=torch.long), "sum"
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Args: preds and target, class indices of the same shape (e.g. N, H, W)."""
        c = self.num_classes
        valid = target != self.ignore_index
        bins = torch.where(valid, target.long() * c + preds.long(), c * c).flatten()
        self.counts.scatter_add_(0, bins, torch.ones_like(bins))

    def compute(self) -> torch.Tensor:
        c = self.num_classes
        return self.counts[: c * c].reshape(c, c)


def scores_from_confusion(confusion: torch.Tensor, class_names: Sequence[str]) -> dict[str, float]:
    """mIoU, per-class IoU, Dice and pixel accuracy from a confusion matrix.

    A class absent from both the labels and the predictions has no IoU (NaN) and is left out of
    the means, as in mmsegmentation; a class that is predicted but absent from the labels scores 0.

    Returns:
        ``mIoU``, ``IoU/<class name>`` for each class, ``dice`` (mean over classes) and
        ``pixel_acc``.
    """
    # On the host, in float64 (which MPS lacks): one copy of C x C counts, then plain floats.
    confusion = confusion.to("cpu", torch.float64)
    true_positive = confusion.diag()
    labelled = confusion.sum(1)
    predicted = confusion.sum(0)
    union = labelled + predicted - true_positive
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, true_positive / union, nan)
    dice = torch.where(union > 0, 2 * true_positive / (labelled + predicted), nan)
    total = confusion.sum()
    scores = {
        "mIoU": iou.nanmean().item(),
        "dice": dice.nanmean().item(),
        "pixel_acc": (true_positive.sum() / total).item() if total > 0 else float("nan"),
    }
    scores.update({f"IoU/{name}": iou[i].item() for i, name in enumerate(class_names)})
    return scores


def sum_dtype(device_type: str) -> torch.dtype:
    """The dtype of a running sum on a device of this type: float64, but MPS has none (moving a
    float64 tensor there raises), so float32 there. Either way a sum of half-precision values
    (16-true, bf16-true) is never accumulated in their own dtype."""
    return torch.float32 if device_type == "mps" else torch.float64


class MeanOverImages(Metric):
    """The mean of one value per image (the evaluation loss), summed on the device and over
    processes: the same whatever the batch size or the number of processes."""

    full_state_update = False
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), "sum")

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> nn.Module:
        # Where the states are going, from a probe moved the same way: the sum takes that
        # device's dtype before it moves, as a float64 tensor cannot move to MPS.
        self.set_sum_dtype(sum_dtype(fn(torch.zeros(())).device.type))
        return super()._apply(fn, exclude_state)

    def set_sum_dtype(self, dtype: torch.dtype) -> None:
        """Makes the running sum (and its reset value) ``dtype``."""
        self.total = self.total.to(dtype)
        self._defaults["total"] = cast(torch.Tensor, self._defaults["total"]).to(dtype)

    def update(self, values: torch.Tensor, counted: torch.Tensor) -> None:
        """Args: values, one per image (N,); counted (N,) bool, the images to count (an image
        without a labelled pixel has no loss to speak of)."""
        self.total += torch.where(counted, values.detach().to(self.total.dtype), 0.0).sum()
        self.count += counted.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp(min=1)


class PerImageCounts(Metric):
    """Per image: its dataset index and, per class, the pixels labelled, predicted and right.

    Those three counts give each image's own IoU per class, mIoU and pixel accuracy (see
    :func:`per_image_scores`); they come from the same predictions as the split's confusion matrix,
    by three scatter-adds on the device per batch, and are gathered over processes at the end.

    Args:
        num_classes: number of classes.
        ignore_index: ground-truth value whose pixels are left out (predictions there too).
    """

    full_state_update = False
    # Lists of each batch's tensors while accumulating; one tensor each after a sync.
    indices: list[torch.Tensor]
    counts: list[torch.Tensor]

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("indices", [], "cat")
        self.add_state("counts", [], "cat")  # (N, 3, C): labelled, predicted, right

    def update(self, preds: torch.Tensor, target: torch.Tensor, indices: torch.Tensor) -> None:
        """Args: preds and target (N, H, W) class indices; indices (N,) the images' dataset
        indices."""
        n, c = target.shape[0], self.num_classes
        valid = target != self.ignore_index
        # Each image's bins are n * c .. n * c + c - 1; ignored pixels go to a spare last bin.
        offset = torch.arange(n, device=target.device).view(n, 1, 1) * c
        spare = n * c
        labelled = torch.where(valid, target.long() + offset, spare)
        predicted = torch.where(valid, preds.long() + offset, spare)
        right = torch.where(valid & (preds == target), labelled, spare)
        counts = torch.zeros(3, spare + 1, dtype=torch.long, device=target.device)
        for row, bins in enumerate((labelled, predicted, right)):
            counts[row].scatter_add_(0, bins.flatten(), torch.ones_like(bins.flatten()))
        self.counts.append(counts[:, :spare].view(3, n, c).transpose(0, 1))
        self.indices.append(indices.long())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices (N,), counts (N, 3, C)), in dataset order."""
        indices = _cat(self.indices, torch.long)
        counts = _cat(self.counts, torch.long).reshape(-1, 3, self.num_classes)
        order = indices.argsort()
        return indices[order], counts[order]


def _cat(values: torch.Tensor | list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    # Before a sync the state is a list of batches; after one, a single tensor.
    if isinstance(values, torch.Tensor):
        return values
    return torch.cat(values) if values else torch.zeros(0, dtype=dtype)


def per_image_scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each image's own scores from its counts (N, 3, C) of :class:`PerImageCounts`.

    Returns:
        ``pixel_acc`` (N,); ``mIoU`` (N,), the mean IoU over the classes present in the image's
        labels or its prediction; ``IoU`` (N, C), NaN for a class in neither. An image without
        labelled pixels has NaN scores.
    """
    # On the host, in float64 (which MPS lacks): one copy of the counts, read there row by row.
    labelled, predicted, right = counts.to("cpu", torch.float64).unbind(1)
    union = labelled + predicted - right
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, right / union, nan)
    total = labelled.sum(1)
    return {
        "pixel_acc": torch.where(total > 0, right.sum(1) / total, nan),
        "mIoU": iou.nanmean(1),
        "IoU": iou,
    }


class StageMetrics(nn.Module):
    """What one stage (validation, test, training) accumulates over an epoch: the confusion
    matrix, the mean over images of each image's loss and, optionally, each image's counts.

    Args:
        num_classes: number of classes.
        ignore_index: ground-truth value whose pixels are left out.
        per_image: also keep each image's counts (:class:`PerImageCounts`).
    """

    def __init__(self, num_classes: int, ignore_index: int, per_image: bool = False) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.confusion = ConfusionMatrix(num_classes, ignore_index)
        self.image_loss = MeanOverImages()
        self.image_counts = PerImageCounts(num_classes, ignore_index) if per_image else None

    def update(
        self,
        predictions: torch.Tensor,
        target: torch.Tensor,
        losses: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> None:
        """Args: predictions and target (N, H, W) class indices; losses (N,), each image's own
        loss, if the stage keeps them; indices (N,), the images' dataset indices, with
        ``per_image``."""
        self.confusion.update(predictions, target)
        if losses is not None:
            labelled = (target != self.ignore_index).flatten(1).any(1)
            self.image_loss.update(losses, labelled)
        if self.image_counts is not None and indices is not None:
            self.image_counts.update(predictions, target, indices)

    def results(self) -> tuple[torch.Tensor, float, tuple[torch.Tensor, torch.Tensor] | None]:
        """The epoch's confusion matrix, mean image loss (NaN when no loss was kept) and
        per-image (indices, counts); every state summed over processes, then reset."""
        confusion = self.confusion.compute()
        loss = self.image_loss.compute().item() if self.image_loss.update_count else float("nan")
        per_image = None
        if self.image_counts is not None:
            indices, counts = self.image_counts.compute()
            # torchmetrics squeezes a one-element result: one image's index comes back 0-d.
            indices = indices.reshape(-1)
            per_image = (indices, counts.reshape(len(indices), 3, -1))
        self.reset()
        return confusion, loss, per_image

    def reset(self) -> None:
        for metric in (self.confusion, self.image_loss, self.image_counts):
            if metric is not None:
                metric.reset()
