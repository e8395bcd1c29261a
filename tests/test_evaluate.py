"""Metrics against confusion matrices computed by hand."""

import math

import numpy as np
import pytest
import torch

from refinenet.evaluate import (
    ImageCounts,
    bootstrap_difference,
    bootstrap_intervals,
    confusion_matrix,
    metrics_from_confusion,
    plot_confusion,
)


def test_confusion_matrix_counts_by_hand_and_skips_ignored_pixels():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    cm = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
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


def test_eval_command_matches_an_independent_computation(tmp_path):
    """``refinenet eval`` on a generated CamVid-layout folder agrees with a direct forward pass,
    argmax and confusion count written here with numpy."""
    import json
    import shlex

    import torch.nn.functional as F
    from _datagen import make_folder
    from PIL import Image

    import refinenet
    from refinenet.cli import main
    from refinenet.hub import save_pretrained

    make_folder(tmp_path / "data" / "test", tmp_path / "data" / "testannot", ["a", "b"], size=(45, 33), ignore=3)
    torch.manual_seed(0)
    model = refinenet.refinenet_mobilenetv2(
        num_classes=3, widths=[16, 16, 16, 16], ignore_index=3, class_names=["x", "y", "z"]
    ).eval()
    save_pretrained(model, tmp_path / "model")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(tmp_path / "data"),
                "--split",
                "test",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())

    per_image = {}
    mean, std = np.array(model.config.mean), np.array(model.config.std)
    for stem in ["a", "b"]:
        cm = per_image[stem] = np.zeros((3, 3), np.int64)
        rgb = np.asarray(Image.open(tmp_path / "data" / "test" / f"{stem}.png").convert("RGB"), np.float64) / 255
        x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            pred = F.interpolate(model(x), size=rgb.shape[:2], mode="bilinear").argmax(1)[0].numpy()
        label = np.asarray(Image.open(tmp_path / "data" / "testannot" / f"{stem}.png"))
        for t, p in zip(label.ravel(), pred.ravel(), strict=True):
            if t != 3:
                cm[t, p] += 1
    assert result["confusion_matrix"] == (per_image["a"] + per_image["b"]).tolist()
    assert result["images"] == 2 and set(result["per_class_iou"]) == {"x", "y", "z"}
    # The JSON says how it was made, so a model card can quote the exact command beside the number.
    assert result["command"] == shlex.join(
        ["refinenet", "eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data")]
        + ["--split", "test", "--out", str(out), "--device", "cpu"]
    )

    # --every 2 keeps every second image in file order: only "a".
    assert (
        main(
            [
                "eval",
                "--model",
                str(tmp_path / "model"),
                "--data",
                str(tmp_path / "data"),
                "--split",
                "test",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--every",
                "2",
            ]
        )
        == 0
    )
    sampled = json.loads(out.read_text())
    assert sampled["images"] == 1 and sampled["every"] == 2
    assert sampled["confusion_matrix"] == per_image["a"].tolist()
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--every", "0"]) == 2


def test_eval_reports_found_and_outside_where_the_split_has_human_boxes(tmp_path):
    """A folders-layout split with boxes.json: ``refinenet eval`` adds found/outside, and they
    match a count written here with numpy from the model's own predictions."""
    import json

    import torch.nn.functional as F
    from _datagen import make_folder
    from PIL import Image

    import refinenet
    from refinenet.cli import main
    from refinenet.hub import save_pretrained

    split = tmp_path / "data" / "val"
    make_folder(split / "images", split / "labels", ["a", "b"], size=(40, 32))
    boxes = {"a": [[1, 0, 0, 20, 16], [2, 20, 16, 40, 32]], "b": [[2, 5, 5, 35, 30]]}
    (split / "boxes.json").write_text(json.dumps(boxes))
    torch.manual_seed(3)
    model = refinenet.refinenet_mobilenetv2(num_classes=3, widths=[16, 16, 16, 16], ignore_index=255).eval()
    save_pretrained(model, tmp_path / "model")
    out = tmp_path / "r.json"
    split_args = ["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "data"), "--split", "val"]
    paired_args = ["--bootstrap", "200", "--against", str(tmp_path / "model")]
    assert main([*split_args, "--out", str(out), "--device", "cpu", *paired_args]) == 0
    result = json.loads(out.read_text())
    # Two photos: a draw of both gives the split's own figures, which lie between those of
    # either photo drawn twice (a ratio of sums lies between the ratios), so inside the interval.
    spread = result["bootstrap"]
    assert spread["rounds"] == 200
    assert spread["found"][0] <= result["found"] <= spread["found"][1]
    # Against itself, on the same draws, every difference is zero and it is never higher.
    paired = spread["against"]
    assert paired["model"] == str(tmp_path / "model")
    assert paired["mIoU"] == [0.0, 0.0] and paired["found"] == [0.0, 0.0]
    assert paired["higher_in"]["mIoU"] == 0.0
    assert main([*split_args, "--against", str(tmp_path / "model")]) == 2  # --against needs --bootstrap

    found = total = outside = predicted = 0
    mean, std = np.array(model.config.mean), np.array(model.config.std)
    for stem, image_boxes in boxes.items():
        rgb = np.asarray(Image.open(split / "images" / f"{stem}.png").convert("RGB"), np.float64) / 255
        x = torch.from_numpy(((rgb - mean) / std).transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            pred = F.interpolate(model(x), size=rgb.shape[:2], mode="bilinear").argmax(1)[0].numpy()
        inside = np.zeros((3, *pred.shape), bool)
        for c, x0, y0, x1, y1 in image_boxes:
            inside[c, y0:y1, x0:x1] = True
            found += (pred[y0:y1, x0:x1] == c).mean() >= 0.1
            total += 1
        for c in (1, 2):
            predicted += (pred == c).sum()
            outside += ((pred == c) & ~inside[c]).sum()
    assert result["boxes"] == 3
    assert result["found"] == pytest.approx(found / total * 100)
    assert result["outside"] == pytest.approx(outside / predicted * 100 if predicted else float("nan"), nan_ok=True)


def test_bootstrap_intervals_span_what_the_draws_of_two_images_can_give():
    """Image A is all right (mIoU 100, its box found, nothing outside), image B all wrong (0, not
    found, all of its 10 object pixels outside). Two draws with replacement give AA (1/4 of the
    time), AB (1/2) or BB (1/4): mIoU 100, 33.33 (each class 10 / (20 + 20 - 10)) or 0; found 100,
    50 or 0; outside 0, 50 or 100. A 90% interval reaches from BB to AA; a 40% one, from the 30th
    to the 70th percentile, lies inside AB's half."""
    a = np.array([[10, 0], [0, 10]])
    b = np.array([[0, 10], [10, 0]])
    totals = np.array([[1, 1, 0, 10], [0, 1, 10, 10]])  # found, boxes, outside, object pixels
    wide = bootstrap_intervals(ImageCounts(np.stack([a, b]), totals), rounds=4000, level=0.9)
    assert wide["mIoU"] == pytest.approx([0, 100])
    assert wide["found"] == pytest.approx([0, 100])
    assert wide["outside"] == pytest.approx([0, 100])
    narrow = bootstrap_intervals(ImageCounts(np.stack([a, b]), totals), rounds=4000, level=0.4)
    assert narrow["mIoU"] == pytest.approx([100 / 3, 100 / 3])
    assert narrow["found"] == pytest.approx([50, 50])
    assert narrow["outside"] == pytest.approx([50, 50])
    assert (narrow["rounds"], narrow["level"]) == (4000, 0.4)


def test_bootstrap_of_identical_images_has_no_spread_and_without_boxes_reports_miou_alone():
    cm = np.array([[6, 2, 0], [1, 5, 0], [0, 0, 0]])  # class 2 absent: left out, as in the mean
    spread = bootstrap_intervals(ImageCounts(np.stack([cm] * 5)), rounds=50)
    expected = metrics_from_confusion(cm)["mIoU"]
    assert spread["mIoU"] == pytest.approx([expected, expected])
    assert "found" not in spread and "outside" not in spread
    with pytest.raises(ValueError):
        bootstrap_intervals(ImageCounts(np.stack([cm])), rounds=10, level=1.0)


def test_a_paired_bootstrap_compares_two_models_on_the_same_draws():
    """Model X gets images A and B right; model Y gets A right and B all wrong. On the draws AA
    (1/4), AB (1/2) and BB (1/4), X scores 100 and Y 100, 33.33 or 0: the difference is 0, 66.67
    or 100, and X is higher in the three quarters of draws that hold B. Unpaired, the two
    models' intervals would overlap; paired, the 40% interval is exactly AB's difference."""
    right, wrong = np.array([[10, 0], [0, 10]]), np.array([[0, 10], [10, 0]])
    x = ImageCounts(np.stack([right, right]), np.array([[1, 1, 0, 10], [1, 1, 0, 10]]))
    y = ImageCounts(np.stack([right, wrong]), np.array([[1, 1, 0, 10], [0, 1, 10, 10]]))
    wide = bootstrap_difference(x, y, rounds=4000, level=0.9)
    assert wide["mIoU"] == pytest.approx([0, 100])
    assert wide["higher_in"]["mIoU"] == pytest.approx(75, abs=3)
    narrow = bootstrap_difference(x, y, rounds=4000, level=0.4)
    assert narrow["mIoU"] == pytest.approx([200 / 3, 200 / 3])
    assert narrow["found"] == pytest.approx([50, 50])
    assert narrow["outside"] == pytest.approx([-50, -50])  # X puts less outside
    assert narrow["higher_in"]["outside"] == 0
    with pytest.raises(ValueError, match="different images"):
        bootstrap_difference(x, ImageCounts(np.stack([right])), rounds=10)
