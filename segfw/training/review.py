"""Where a model fails: each image's own scores, and the lowest-scoring images drawn.

The scores come from :class:`segfw.training.metrics.PerImageCounts`, counted in the same pass as
the split's confusion matrix; drawing the worst images predicts those few again.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from segfw.data import SegmentationDataModule
from segfw.data.samplers import like_sized_batches
from segfw.training.metrics import per_image_scores
from segfw.training.module import SegmentationModule
from segfw.visualize import (
    ERROR_MAP_LEGEND,
    captioned_rows,
    checkpoint_palette,
    sample_strip,
    shrink,
)

# Longest side of each panel of a gallery row.
PANEL_SIZE = 256
# Pixels the gallery's legend line needs.
LEGEND_WIDTH = 560


def write_per_image_csv(
    path: Path,
    tables: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    datamodule: SegmentationDataModule,
    class_names: Sequence[str],
) -> None:
    """Writes one row per image: ``split, index, path, pixel_acc, mIoU, IoU/<class> ...``; a
    score that does not exist (a class in neither the labels nor the prediction) is left empty.

    Args:
        path: the CSV file.
        tables: stage -> (dataset indices, counts) of :class:`PerImageCounts`.
        datamodule: where the images come from, for their paths.
        class_names: one name per class.
    """
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["split", "index", "path", "pixel_acc", "mIoU", *(f"IoU/{c}" for c in class_names)]
        )
        for stage, (indices, counts) in tables.items():
            source = datamodule.dataset(stage).source
            scores = per_image_scores(counts)
            # Each column read into Python at once: a read per cell would wait on the device
            # once per cell (thousands of waits for a test split).
            columns = zip(
                scores["pixel_acc"].tolist(),
                scores["mIoU"].tolist(),
                scores["IoU"].tolist(),
                strict=True,
            )
            for index, (accuracy, mean_iou, ious) in zip(indices.tolist(), columns, strict=True):
                values = [accuracy, mean_iou, *ious]
                writer.writerow(
                    [datamodule.splits[stage], index, source.image_path(index), *map(_cell, values)]
                )


def _cell(number: float) -> str:
    return "" if math.isnan(number) else f"{number:.6f}"


def worst_indices(indices: torch.Tensor, counts: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The ``k`` images of lowest mIoU, lowest first, as (dataset index, mIoU); images without a
    score (no labelled pixel) are left out. Ties keep dataset order."""
    scores = per_image_scores(counts)["mIoU"].tolist()
    pairs = zip(indices.tolist(), scores, strict=True)
    scored = [(score, index) for index, score in pairs if not math.isnan(score)]
    scored.sort(key=lambda pair: pair[0])  # stable: equal scores stay in dataset order
    return [(index, score) for score, index in scored[:k]]


def worst_cases(
    module: SegmentationModule,
    datamodule: SegmentationDataModule,
    stage: str,
    indices: torch.Tensor,
    counts: torch.Tensor,
    k: int,
    precision: Callable[[], AbstractContextManager] = nullcontext,
) -> list[dict[str, Any]]:
    """The ``k`` lowest-scoring images of ``stage``, predicted again as evaluation predicted them
    (in eval mode, under ``precision``, the context evaluation ran its steps in): each a dict of
    ``index``, ``name`` (its image file), ``mIoU``, ``image`` (H, W, 3), ``target`` and
    ``prediction`` (H, W) uint8 numpy arrays."""
    chosen = worst_indices(indices, counts, k)
    dataset = datamodule.dataset(stage)
    items = [dataset[index] for index, _ in chosen]
    collate = torch.utils.data.default_collate
    predictions = predict_items(module, items, datamodule.eval_batch_size, collate, precision)
    return [
        {
            "index": index,
            "name": dataset.source.image_path(index),
            "mIoU": score,
            "image": item["image"].permute(1, 2, 0).numpy(),
            "target": item["mask"].numpy(),
            "prediction": prediction.numpy(),
        }
        for (index, score), item, prediction in zip(chosen, items, predictions, strict=True)
    ]


def predict_items(
    module: SegmentationModule,
    items: Sequence[dict[str, torch.Tensor]],
    batch_size: int,
    collate: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]],
    precision: Callable[[], AbstractContextManager] = nullcontext,
) -> list[torch.Tensor]:
    """Class indices (H, W) uint8 on the CPU of each of ``items`` (dataset samples), at its own
    size, predicted as evaluation predicts: in batches of at most ``batch_size`` images of one
    size, by :meth:`SegmentationModule.evaluation_logits`, under ``precision`` (the trainer's
    evaluation precision context, when a run's is to be matched)."""
    predictions: list[torch.Tensor] = [torch.empty(0)] * len(items)
    # In eval mode, as evaluation ran: a module in train mode (one built to score the weights in
    # memory) would normalize with each batch's own statistics and draw other predictions.
    was_training = module.training
    module.eval()
    try:
        for positions, batch in like_sized_batches(items, batch_size, collate):
            with torch.inference_mode(), precision():
                logits = module.evaluation_logits(batch["image"].to(module.device))
            labels = logits.argmax(1).to(torch.uint8).cpu()
            for row, position in enumerate(positions):
                height, width = items[position]["mask"].shape
                predictions[position] = labels[row, :height, :width]
    finally:
        module.train(was_training)
    return predictions


def gallery(cases: Sequence[dict[str, Any]], palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """The cases of :func:`worst_cases` as rows image | ground truth | prediction | error map,
    each under its file name and score, below a line that says what the panels are; RGB uint8."""
    rows = []
    for case in cases:
        strip = sample_strip(
            shrink(case["image"], PANEL_SIZE, nearest=False),
            shrink(case["target"], PANEL_SIZE, nearest=True),
            shrink(case["prediction"], PANEL_SIZE, nearest=True),
            palette,
            ignore_index,
        )
        caption = f"mIoU {case['mIoU']:.3f}  #{case['index']}  {Path(case['name']).name}"
        rows.append((caption, strip))
    # Wide enough for the legend's text.
    width = max(LEGEND_WIDTH, *(strip.shape[1] for _, strip in rows))
    legend = f"image | ground truth | prediction | {ERROR_MAP_LEGEND}"
    return captioned_rows([(legend, np.full((1, width, 3), 255, np.uint8)), *rows])


def worst_case_gallery(
    module: SegmentationModule,
    datamodule: SegmentationDataModule,
    stage: str,
    indices: torch.Tensor,
    counts: torch.Tensor,
    k: int,
    path: Path,
    precision: Callable[[], AbstractContextManager] = nullcontext,
) -> list[dict[str, Any]]:
    """Draws the ``k`` lowest-scoring images of ``stage`` into the PNG ``path``; returns them
    (:func:`worst_cases`, predicted under ``precision``)."""
    cases = worst_cases(module, datamodule, stage, indices, counts, k, precision)
    if cases:
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = gallery(cases, checkpoint_palette(module.hparams), module.hparams["ignore_index"])
        Image.fromarray(picture).save(path)
    return cases
