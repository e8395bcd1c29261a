"""Metrics against confusion matrices computed by hand."""

import math

import numpy as np
import pytest
import torch

from refinenet.evaluate import confusion_matrix, metrics_from_confusion, plot_confusion


def test_confusion_matrix_counts_by_hand_and_skips_ignored_pixels():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    cm = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    expected = torch.tensor([[1, 1, 0, 0],
                             [0, 2, 0, 0],
                             [0, 1, 0, 0],
                             [0, 0, 0, 0]])
    assert torch.equal(cm, expected)


def test_iou_absent_class_is_left_out_of_the_mean():
    cm = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c", "d"])
    # IoU a = 1/(2+1-1) = 0.5; b = 2/(2+4-2) = 0.5; c = 0/(1+0-0) = 0; d never seen: no IoU.
    assert m["per_class_iou"] == {"a": 50.0, "b": 50.0, "c": 0.0, "d": None}
    assert m["mIoU"] == pytest.approx(100 / 3)
    assert m["pixel_accuracy"] == pytest.approx(60.0)
    assert m["mean_class_accuracy"] == pytest.approx((50 + 100 + 0) / 3)


def test_class_predicted_but_absent_from_truth_scores_zero():
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 2, 1, 1])
    m = metrics_from_confusion(confusion_matrix(pred, target, 3), ["a", "b", "c"])
    assert m["per_class_iou"]["c"] == 0.0
    assert m["mIoU"] == pytest.approx((50 + 100 + 0) / 3)


def test_empty_confusion_gives_nan_not_a_crash():
    m = metrics_from_confusion(np.zeros((3, 3)))
    assert math.isnan(m["mIoU"]) and math.isnan(m["pixel_accuracy"])


def test_confusion_plot_is_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "cm.png"
    plot_confusion([[5, 1], [0, 3]], ["road", "car"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
