"""Human boxes: the found/outside metrics, boxes that follow a training crop, and the classes
the boxes allow (the rule distillation and the labels share). Answers are worked out by hand."""

import random

import numpy as np
import pytest
import torch
from PIL import Image

from refinenet.data import CropGeometry, TrainTransform, allowed_classes, collate_with_boxes, small_box_weights
from refinenet.evaluate import BoxCounts


def test_found_and_outside_on_a_hand_made_label_map():
    # A 10 x 20 prediction: class 1 fills columns 0-3 of rows 0-4 (20 px), class 2 a 2 x 2 square
    # at rows 6-7, columns 10-11 (4 px), class 1 again one pixel at row 9, column 19.
    pred = torch.zeros(10, 20, dtype=torch.long)
    pred[0:5, 0:4] = 1
    pred[6:8, 10:12] = 2
    pred[9, 19] = 1
    boxes = [
        [1, 0, 0, 10, 5],  # 50 px, 20 of them class 1: 40% >= 10%, found
        [2, 8, 5, 18, 10],  # 50 px, 4 of them class 2: 8% < 10%, missed
        [2, 10, 6, 11, 7],  # 1 px, class 2: found, and small (1 px < 2% of 200 px = 4 px)
        [3, 15, 0, 20, 2],  # 10 px, no class 3 at all: missed
    ]
    counts = BoxCounts(num_classes=4)
    counts.add(pred, boxes)
    m = counts.metrics(["background", "a", "b", "c"])
    assert m["boxes"] == 4 and m["small_boxes"] == 1
    assert m["found"] == pytest.approx(50.0)  # 2 of 4
    assert m["found_small"] == pytest.approx(100.0)  # 1 of 1
    assert m["per_class_found"] == {"background": None, "a": 100.0, "b": 50.0, "c": 0.0}
    # Object pixels: 21 of class 1 (one outside its box), 4 of class 2 (all inside a class-2 box).
    assert m["outside"] == pytest.approx(1 / 25 * 100)
    assert m["per_class_outside"]["a"] == pytest.approx(1 / 21 * 100)
    assert m["per_class_outside"]["b"] == 0.0
    assert m["per_class_outside"]["c"] is None  # never predicted
    assert m["per_class_outside"]["background"] is None


def test_outside_counts_a_class_painted_inside_another_class_box():
    pred = torch.full((4, 4), 2)
    counts = BoxCounts(num_classes=3)
    counts.add(pred, [[1, 0, 0, 4, 4]])  # the box is class 1; every pixel says class 2
    m = counts.metrics()
    assert m["outside"] == 100.0 and m["found"] == 0.0


def test_outside_pixels_are_split_by_what_the_labels_say_there():
    # One class-1 box over the left half of a 4 x 4 image; the model paints class 1 on the whole
    # top row and the whole right column: 4 + 3 = 7 pixels, 5 of them outside the box (columns 2-3
    # of row 0, and column 3 of rows 1-3).
    pred = torch.zeros(4, 4, dtype=torch.long)
    pred[0, :] = 1
    pred[:, 3] = 1
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[0, 2] = 255  # unlabelled
    labels[1, 3] = 255  # unlabelled
    labels[2, 3] = 2  # another object's label
    # (0, 3) and (3, 3) stay background
    counts = BoxCounts(num_classes=3)
    counts.add(pred, [[1, 0, 0, 2, 4]], labels, ignore_index=255)
    m = counts.metrics()
    assert m["outside"] == pytest.approx(5 / 7 * 100)  # only (0, 0) and (0, 1) are inside the box
    assert m["outside_by_label"] == pytest.approx({"background": 40.0, "unlabelled": 40.0, "object": 20.0})
    assert "outside_by_label" not in BoxCounts(num_classes=3).metrics()  # without labels: not claimed


def test_counts_accumulate_over_images():
    counts = BoxCounts(num_classes=2)
    counts.add(torch.ones(2, 2, dtype=torch.long), [[1, 0, 0, 2, 2]])
    counts.add(torch.zeros(2, 2, dtype=torch.long), [[1, 0, 0, 2, 2]])
    assert counts.metrics()["found"] == 50.0


def test_boxes_follow_scale_crop_and_flip():
    g = CropGeometry(scale_x=2.0, scale_y=2.0, height=40, width=60, top=4, left=10, size=16, flipped=False)
    boxes = torch.tensor([[5.0, 6, 3, 9, 5], [7.0, 0, 0, 2, 2]])
    out = g.boxes(boxes)
    # (6, 3, 9, 5) * 2 = (12, 6, 18, 10) minus (left 10, top 4) = (2, 2, 8, 6); the second box
    # lands at (-10, -4, -6, 0): outside the crop, dropped.
    assert out.tolist() == [[5.0, 2, 2, 8, 6]]
    mirrored = CropGeometry(2.0, 2.0, 40, 60, 4, 10, 16, flipped=True).boxes(boxes)
    assert mirrored.tolist() == [[5.0, 8, 2, 14, 6]]  # x -> 16 - x, ends swapped


def test_the_photo_region_excludes_padding_and_flips_with_the_crop():
    g = CropGeometry(1.0, 1.0, height=10, width=12, top=0, left=0, size=16, flipped=False)
    assert g.photo_region().tolist() == [0, 0, 10, 12]
    assert CropGeometry(1.0, 1.0, 10, 12, 0, 0, 16, flipped=True).photo_region().tolist() == [0, 4, 10, 16]


def test_a_box_drawn_on_the_photo_marks_the_same_pixels_in_the_crop():
    """End to end through TrainTransform: paint a box's pixels with label 1, transform, and the
    transformed box must cover exactly the transformed label-1 pixels."""
    label = np.zeros((30, 40), np.uint8)
    label[5:17, 8:30] = 1  # the box [1, 8, 5, 30, 17]
    image = Image.fromarray(np.zeros((30, 40, 3), np.uint8))
    transform = TrainTransform(crop_size=24, scale_range=(1.0, 1.0), flip=True, photometric=0.0)
    for seed in range(6):
        _, y, geometry = transform.apply(image, Image.fromarray(label), random.Random(seed))
        box = geometry.boxes(torch.tensor([[1.0, 8, 5, 30, 17]]))
        drawn = torch.zeros_like(y, dtype=torch.bool)
        for _, x0, y0, x1, y1 in box.long().tolist():
            drawn[y0:y1, x0:x1] = True
        assert torch.equal(drawn, y == 1), seed


def test_allowed_classes_follow_boxes_and_leave_padding_out():
    batch = [
        (
            torch.zeros(3, 8, 8),
            torch.zeros(8, 8, dtype=torch.long),
            torch.tensor([[2.0, 1, 1, 3, 3]]),
            torch.tensor([0, 0, 6, 8]),
        ),
        (torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.long), torch.zeros(0, 5), torch.tensor([0, 0, 8, 8])),
    ]
    _, _, boxes, region = collate_with_boxes(batch)
    allowed = allowed_classes(boxes, region, num_classes=3, size=(8, 8), margin=1)
    assert allowed.shape == (2, 3, 8, 8)
    assert allowed[0, 0, :6].all() and not allowed[0, :, 6:].any()  # rows 6-7 are padding
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[0:4, 0:4] = True  # the box (1, 1)-(3, 3) grown by the margin of 1
    assert torch.equal(allowed[0, 2], expected)
    assert not allowed[0, 1].any() and not allowed[1, 1:].any() and allowed[1, 0].all()


def test_small_box_weights_weigh_the_small_boxes_own_class_pixels_only():
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, 1:3, 1:3] = 1  # a 2 x 2 object in its 3 x 3 box (1, 1)-(4, 4): small at 10 pixels
    labels[0, 2, 3] = 2  # another class inside the small box: not weighed
    labels[0, 5:10, 0:10] = 2  # a 10 x 5 object whose box (0, 5)-(10, 12) reaches past the crop
    boxes = torch.tensor([[[1.0, 1, 1, 4, 4], [2.0, 0, 5, 10, 12], [0.0, 0, 0, 0, 0]]])  # last: padding
    weights = small_box_weights(boxes, labels, max_pixels=10, weight=3.0)
    expected = torch.ones(1, 10, 10)
    expected[0, 1:3, 1:3] = 3.0  # only box 1 is small (9 pixels); box 2 counts its 70 whole
    assert torch.equal(weights, expected)
    # At a threshold of 9 pixels no box is small.
    assert torch.equal(small_box_weights(boxes, labels, max_pixels=9, weight=3.0), torch.ones(1, 10, 10))
