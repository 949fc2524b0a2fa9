"""Dataset-level segmentation metrics from one confusion matrix accumulated over an epoch.

Per-image averaging (torchmetrics' MeanIoU) and per-batch means are both biased for segmentation;
the standard (PASCAL VOC, Cityscapes, mmsegmentation) is one C x C confusion matrix over every
labelled pixel of the split, from which IoU, Dice and accuracy all follow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
    confusion = confusion.double()
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
