"""Metrics against a confusion matrix counted by hand, with ignored pixels."""

import math

import pytest
import torch

from segfw.training.metrics import (
    ConfusionMatrix,
    PerImageCounts,
    per_image_scores,
    scores_from_confusion,
)

IGNORE = 255
NAMES = ["background", "cat", "dog"]


def batches():
    # Two batches of 1x2x3 "images". Ground truth 255 = ignored, whatever is predicted there.
    target_a = torch.tensor([[[0, 0, 1], [1, 2, IGNORE]]])
    preds_a = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    target_b = torch.tensor([[[2, 2, IGNORE], [0, 1, 1]]])
    preds_b = torch.tensor([[[2, 0, 0], [0, 1, 2]]])
    return [(preds_a, target_a), (preds_b, target_b)]


def hand_confusion():
    # Rows: ground truth, columns: prediction, counted pixel by pixel from batches() above,
    # skipping the two ignored pixels.
    #   gt 0: (0->0), (0->1), (0->0)            -> [2, 1, 0]
    #   gt 1: (1->1), (1->1), (1->1), (1->2)    -> [0, 3, 1]
    #   gt 2: (2->0), (2->2), (2->0)            -> [2, 0, 1]
    return torch.tensor([[2, 1, 0], [0, 3, 1], [2, 0, 1]])


def test_confusion_matrix_matches_hand_count_and_skips_ignored():
    metric = ConfusionMatrix(num_classes=3, ignore_index=IGNORE)
    for preds, target in batches():
        metric.update(preds, target)
    assert torch.equal(metric.compute(), hand_confusion())


def test_scores_follow_from_the_confusion_matrix():
    scores = scores_from_confusion(hand_confusion(), NAMES)
    # IoU = TP / (TP + FP + FN) per class, from hand_confusion():
    iou = {"background": 2 / (2 + 2 + 1), "cat": 3 / (3 + 1 + 1), "dog": 1 / (1 + 1 + 2)}
    for name, value in iou.items():
        assert scores[f"IoU/{name}"] == pytest.approx(value)
    assert scores["mIoU"] == pytest.approx(sum(iou.values()) / 3)
    dice = [2 * 2 / (3 + 4), 2 * 3 / (4 + 4), 2 * 1 / (3 + 2)]
    assert scores["dice"] == pytest.approx(sum(dice) / 3)
    assert scores["pixel_acc"] == pytest.approx(6 / 10)


def test_class_absent_everywhere_is_left_out_of_the_mean():
    confusion = torch.tensor([[3, 1, 0], [1, 5, 0], [0, 0, 0]])
    scores = scores_from_confusion(confusion, NAMES)
    assert math.isnan(scores["IoU/dog"])
    assert scores["mIoU"] == pytest.approx((3 / 5 + 5 / 7) / 2)


def test_class_predicted_but_absent_from_labels_scores_zero():
    confusion = torch.tensor([[3, 0, 1], [0, 5, 0], [0, 0, 0]])
    assert scores_from_confusion(confusion, NAMES)["IoU/dog"] == 0.0


def test_per_image_scores_equal_each_images_own_confusion_matrix_counted_by_hand():
    # The two "images" of batches(), given dataset indices 7 and 3, updated in one batch of two.
    (preds_a, target_a), (preds_b, target_b) = batches()
    counts = PerImageCounts(3, IGNORE)
    counts.update(
        torch.cat([preds_a, preds_b]), torch.cat([target_a, target_b]), torch.tensor([7, 3])
    )
    indices, per_image = counts.compute()
    assert indices.tolist() == [3, 7]  # dataset order
    scores = per_image_scores(per_image)
    # Image 7 (batch a) by hand: gt 0: [1, 1, 0]; gt 1: [0, 2, 0]; gt 2: [1, 0, 0] ->
    # IoU 0: 1 / (2 + 2 - 1) = 1/3, IoU 1: 2 / (2 + 3 - 2) = 2/3, IoU 2: 0 / (1 + 0) = 0.
    # Image 3 (batch b): gt 0: [1, 0, 0]; gt 1: [0, 1, 1]; gt 2: [1, 0, 1] ->
    # IoU 0: 1 / (1 + 2 - 1) = 1/2, IoU 1: 1 / (2 + 1 - 1) = 1/2, IoU 2: 1 / (2 + 2 - 1) = 1/3.
    expected = {7: [1 / 3, 2 / 3, 0.0], 3: [1 / 2, 1 / 2, 1 / 3]}
    for row, index in enumerate(indices.tolist()):
        assert scores["IoU"][row].tolist() == pytest.approx(expected[index])
        assert scores["mIoU"][row].item() == pytest.approx(sum(expected[index]) / 3)
    assert scores["pixel_acc"].tolist() == pytest.approx([3 / 5, 3 / 5])
    # Summed over the images, the counts are the split's confusion matrix's margins.
    confusion = hand_confusion()
    assert per_image[:, 0].sum(0).tolist() == confusion.sum(1).tolist()  # labelled
    assert per_image[:, 1].sum(0).tolist() == confusion.sum(0).tolist()  # predicted
    assert per_image[:, 2].sum(0).tolist() == confusion.diag().tolist()  # right


def test_a_class_in_neither_labels_nor_prediction_is_left_out_of_an_images_mean():
    counts = PerImageCounts(4, IGNORE)
    target = torch.tensor([[[0, 0], [1, IGNORE]]])
    counts.update(torch.tensor([[[0, 1], [1, 3]]]), target, torch.tensor([0]))
    scores = per_image_scores(counts.compute()[1])
    # Class 2 appears nowhere: NaN, not a 0 dragging the mean down; class 3 only where ignored.
    assert math.isnan(scores["IoU"][0, 2]) and math.isnan(scores["IoU"][0, 3])
    assert scores["mIoU"][0].item() == pytest.approx((1 / 2 + 1 / 2) / 2)
