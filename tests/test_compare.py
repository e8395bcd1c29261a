"""Comparing variants (refinenet.compare): the disagreement count on hand-made label maps, the
captions (architecture and test mIoU), the refusals, and one comparison of three tiny models."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import calibrate_batch_norm

import refinenet
from refinenet import compare, zoo
from refinenet.config import RefineNetConfig
from refinenet.inference import Segmenter

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- the disagreement count


def test_disagreement_counts_the_variants_outside_the_majority():
    # Three variants, 2 x 3 pixels. Worked out by hand, pixel by pixel:
    a = np.array([[0, 1, 2], [3, 3, 5]], np.uint8)
    b = np.array([[0, 1, 4], [3, 4, 6]], np.uint8)
    c = np.array([[0, 2, 2], [3, 4, 7]], np.uint8)
    # (0,0) 0/0/0: all agree -> 0;  (0,1) 1/1/2: majority 1 (two), one differs -> 1
    # (0,2) 2/4/2: majority 2, one differs -> 1;  (1,0) 3/3/3 -> 0
    # (1,1) 3/4/4: majority 4, one differs -> 1;  (1,2) 5/6/7: all differ, majority of one -> 2
    expected = np.array([[0, 1, 1], [0, 1, 2]], np.uint8)
    got = compare.disagreement([a, b, c])
    assert got.dtype == np.uint8 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, expected)


def test_disagreement_with_a_tie_counts_the_same_whichever_class_wins():
    # Four variants; pixel 0: 2 say 1, 2 say 5 (a tie) -> 2 differ from either "most common" class.
    # Pixel 1: 3 say 9, 1 says 0 -> 1. Pixel 2: all four differ -> 3 (= n - 1, the largest value).
    maps = [np.array([[1, 9, 0]]), np.array([[1, 9, 1]]), np.array([[5, 9, 2]]), np.array([[5, 0, 3]])]
    np.testing.assert_array_equal(compare.disagreement(maps), [[2, 1, 3]])
    # Two identical maps never disagree; one map alone agrees with itself.
    same = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert not compare.disagreement([same, same.copy()]).any()
    assert not compare.disagreement([same]).any()


def test_disagreement_refuses_maps_of_different_sizes():
    with pytest.raises(ValueError, match="one size"):
        compare.disagreement([np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8)])
    with pytest.raises(ValueError, match="no label maps"):
        compare.disagreement([])


def test_disagreement_palette_grows_from_grey_to_dark_red():
    palette = compare.disagreement_palette(4)
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert tuple(palette[0]) == compare.AGREE_COLOUR
    assert tuple(palette[1]) == compare.RAMP_START and tuple(palette[3]) == compare.RAMP_END
    # Darker with every variant more that disagrees (the sum of the channels falls).
    assert palette[1].sum() > palette[2].sum() > palette[3].sum()
    assert len({tuple(c) for c in palette[:4]}) == 4  # every level its own colour
    assert tuple(compare.disagreement_palette(2)[1]) == compare.RAMP_START


# ----------------------------------------------------------------------------- captions


def test_describe_names_the_cascade_its_levels_and_crp():
    four = RefineNetConfig(backbone="mobilenetv2", widths=[32, 16, 16, 16])
    assert compare.describe(four) == (
        "4-cascade: RefineNet-4 (1/32) → RefineNet-3 (1/16) → RefineNet-2 (1/8) → RefineNet-1 (1/4) · 4 CRP stages"
    )
    two = RefineNetConfig(backbone="mobilenetv2", widths=[32, 16], cascade="2-cascade", crp_stages=1)
    assert compare.describe(two) == "2-cascade: RefineNet-2 (1/32+1/16) → RefineNet-1 (1/8+1/4) · 1 CRP stage"
    one = RefineNetConfig(backbone="mobilenetv2", widths=[32], cascade="1-cascade", crp_stages=0)
    assert compare.describe(one) == "1-cascade: RefineNet-1 (1/32+1/16+1/8+1/4) · no CRP (0 stages)"
    custom = RefineNetConfig(widths=[8, 8, 8], cascade=[[4, 3], [2], [1]], architecture="lw-refinenet")
    assert compare.describe(custom).startswith("Light-Weight RefineNet, 3-block cascade: RefineNet-3 (1/32+1/16)")


def test_test_miou_comes_from_the_zoo_or_the_folder_eval_file(tmp_path):
    entry = next(e for e in zoo.list_pretrained() if "test_mean_iou" in e.metrics)
    assert compare.measured_test_miou(entry.model_id) == entry.metrics["test_mean_iou"]
    no_test = next(e for e in zoo.list_pretrained() if "test_mean_iou" not in e.metrics)
    assert compare.measured_test_miou(no_test.model_id) is None  # e.g. a validation-only figure
    assert compare.measured_test_miou(str(tmp_path), tmp_path) is None  # no eval-test.json
    (tmp_path / "eval-test.json").write_text(json.dumps({"mIoU": 57.1234, "pixel_accuracy": 88.0}))
    assert compare.measured_test_miou(str(tmp_path), tmp_path) == pytest.approx(57.1234)
    (tmp_path / "eval-test.json").write_text(json.dumps({"pixel_accuracy": 88.0}))
    with pytest.raises(ValueError, match="no number under 'mIoU'"):
        compare.measured_test_miou(str(tmp_path), tmp_path)
    (tmp_path / "eval-test.json").write_text("{not json")
    with pytest.raises(ValueError, match="not an evaluation file"):
        compare.measured_test_miou(str(tmp_path), tmp_path)


def test_captions_say_the_miou_or_that_it_was_not_measured():
    measured = compare.Variant("x", "camvid-x", "4-cascade: …", 61.456)
    assert measured.caption == "camvid-x · 4-cascade: … · test mIoU 61.46"
    assert compare.Variant("y", "y", "d", None).caption.endswith("test mIoU not measured")


# ----------------------------------------------------------------------------- three tiny variants


def tiny(cascade: str, crp_stages: int, num_classes: int = 5, input_size: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    widths = {"4-cascade": [32, 16, 16, 16], "2-cascade": [32, 16], "1-cascade": [32]}[cascade]
    model = refinenet.refinenet_mobilenetv2(
        num_classes=num_classes, widths=widths, cascade=cascade, crp_stages=crp_stages, input_size=input_size
    )
    model = calibrate_batch_norm(model)
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.weight, std=0.5)
        model.classifier.bias.zero_()
    return model.eval()


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """Three variants as folders (the 4-cascade with an eval-test.json), loaded into Segmenters."""
    root = tmp_path_factory.mktemp("variants")
    # (0 CRP stages is not buildable yet, blocks.ChainedResidualPooling needs one: 1 stage here.)
    specs = {"four": ("4-cascade", 4, 64), "two": ("2-cascade", 4, 48), "onecrp": ("4-cascade", 1, 64)}
    variants, segmenters = [], []
    for i, (name, (cascade, stages, size)) in enumerate(specs.items()):
        model = tiny(cascade, stages, input_size=size, seed=i)
        folder = refinenet.save_pretrained(model, root / name)
        if name == "four":
            (folder / "eval-test.json").write_text(json.dumps({"mIoU": 42.5}))
        loaded = refinenet.from_pretrained(str(folder))
        variants.append(compare.variant(str(folder), loaded.config))
        segmenters.append(Segmenter(loaded, device="cpu", max_side=loaded.config.input_size))
    return variants, segmenters


def test_variants_are_described_from_their_folders(three):
    variants, _ = three
    assert [v.title for v in variants] == ["four", "two", "onecrp"]
    assert [v.test_miou for v in variants] == [42.5, None, None]
    assert variants[1].description.startswith("2-cascade") and variants[2].description.endswith("1 CRP stage")


def test_every_variant_sees_the_same_size_and_the_map_counts_their_disagreement(three):
    variants, segmenters = three
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    result = compare.compare(variants, segmenters, photo)
    # The smallest cap (48) wins: 120 x 90 -> 48 x 36, and no variant rescales it again.
    assert result.size == (36, 48) and result.original_size == (90, 120)
    assert [m.shape for m in result.label_maps] == [(36, 48)] * 3
    # Each label map is what that variant alone says about the resized photo.
    from PIL import Image

    small = Image.fromarray(photo).resize((48, 36), Image.Resampling.BILINEAR)
    for labels, segmenter in zip(result.label_maps, segmenters, strict=True):
        np.testing.assert_array_equal(labels, segmenter.predict(small).label_map)
    # The map, recomputed here by counting each class at each pixel (one-hot), not pairwise.
    stack = np.stack(result.label_maps)
    counts = (stack[None] == np.arange(5)[:, None, None, None]).sum(axis=1)
    np.testing.assert_array_equal(result.disagreement_map, 3 - counts.max(axis=0))
    shares = result.level_shares()
    assert shares.sum() == pytest.approx(1.0) and result.agreement == pytest.approx(np.mean(counts.max(axis=0) == 3))
    # The pictures: a palette PNG whose values are the counts, a grid with one captioned picture
    # per variant, and a key whose headline is the share where all agree.
    picture = compare.render_disagreement(result)
    assert picture.mode == "P" and np.array_equal(np.asarray(picture), result.disagreement_map)
    grid = compare.render_variants(result)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", grid)
    assert [c.split(" · ")[0] for c in captions] == ["four", "two", "onecrp"]
    assert [c.split(" · ")[-1] for c in captions] == ["test mIoU 42.50", *["test mIoU not measured"] * 2]
    key = compare.disagreement_legend(result)
    assert f"All 3 variants agree on <b>{100 * result.agreement:.1f}%</b>" in key
    assert "1 of 3 differs" in key and "2 of 3 differ" in key


def test_variants_with_other_classes_are_refused(three):
    variants, segmenters = three
    voc = tiny("4-cascade", 4, num_classes=7)
    odd = compare.Variant("voc", "voc", "…", None)
    with pytest.raises(ValueError, match="voc predicts 7 classes .* four 5 .* the same classes"):
        compare.check_comparable([variants[0], odd], [segmenters[0], Segmenter(voc, device="cpu")])
    with pytest.raises(ValueError, match="at least two models"):
        compare.check_comparable(variants[:1], segmenters[:1])


def test_common_size_takes_the_smallest_cap():
    assert compare.common_size(480, 640, [512, 256, 0]) == (192, 256)
    assert compare.common_size(100, 50, [512, 256]) == (100, 50)  # within every cap: unchanged
    assert compare.common_size(480, 640, [0, 0]) == (480, 640)  # no caps at all
