"""The demo's cache and panels: one network run per image, every view drawn from the cache.

A tiny random model (calibrated by the shared fixture, so that every backbone level matters and
label maps hold several classes) keeps these fast. The model is wrapped in a counter that
exposes nothing but its config: everything the demo draws comes from the network's output.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import refinenet
from refinenet import demo, widgets
from refinenet.inference import Segmenter
from refinenet.visualize import fit_within, resize_nearest

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = ["sky", "building", "road", "car", "tree"]
PALETTE = [[70, 130, 180], [128, 0, 0], [128, 64, 128], [0, 0, 142], [107, 142, 35]]


class CountingModel(torch.nn.Module):
    """Wraps a model and counts forward passes (the network runs we want to avoid)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.config = model.config  # what a Segmenter needs; nothing else of the model shows
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture
def counted(tiny_model):
    model = copy.deepcopy(tiny_model)
    model.config = dataclasses.replace(model.config, class_names=CLASSES, palette=PALETTE, input_size=160)
    segmenter = Segmenter(CountingModel(model), device="cpu", max_side=160)
    # The Segmenter runs an optimised copy (runtime.fast_path): count the calls of that copy,
    # from zero (finding the conv -> BN pairs traced its forward once, symbolically).
    copy_ = segmenter.model.model
    copy_.calls = 0
    return copy_, segmenter


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:150, 0:200]
    base = np.stack([x * 255 // 200, y * 255 // 150, (x + y) % 256], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


@pytest.fixture
def cached(counted, photo, tmp_path):
    model, segmenter = counted
    return demo.segment(segmenter, photo, model_id="tiny", out_dir=tmp_path)


def test_segment_caches_every_block_and_crp_stage_in_half_precision(cached, photo):
    assert [b.name for b in cached.blocks] == ["RefineNet-4", "RefineNet-3", "RefineNet-2", "RefineNet-1"]
    assert [b.stride for b in cached.blocks] == [32, 16, 8, 4]
    assert [b.levels for b in cached.blocks] == [(32,), (16,), (8,), (4,)]
    assert [(level.stride, level.channels, level.size) for level in cached.levels] == [
        (4, 24, (30, 40)),
        (8, 32, (15, 20)),
        (16, 96, (8, 10)),
        (32, 320, (4, 5)),
    ]
    assert cached.input_size == (120, 160)  # 150 x 200 capped to a long side of 160
    assert cached.original_size == (150, 200)
    block1 = cached.block("RefineNet-1")
    assert block1.output.shape == (16, 30, 40) and block1.output.dtype == np.float16
    assert len(block1.crp_branches) == 4 and len(block1.crp_sums) == 4
    # The running sum after the last stage is the input plus every branch (CRP's definition).
    expected = block1.crp_input.astype(np.float32) + sum(b.astype(np.float32) for b in block1.crp_branches)
    assert np.allclose(block1.crp_sums[-1].astype(np.float32), expected, atol=0.05)
    assert cached.display_image.shape == (150, 200, 3)
    assert cached.logits.shape == (5, 30, 40)
    assert cached.shares.sum() == pytest.approx(1.0)


def test_label_png_is_the_full_size_label_map(cached, counted, photo):
    _, segmenter = counted
    png = Image.open(cached.label_png)
    assert png.format == "PNG" and png.mode == "P" and png.size == photo.size
    reference = segmenter.predict(photo).label_map
    assert np.array_equal(np.asarray(png), reference)
    assert len(np.unique(reference)) > 1  # the calibrated model predicts several classes


def test_views_never_rerun_the_network(counted, cached):
    model, segmenter = counted
    assert model.calls == 1
    for reduction in ("pca", "l2", "mean", "topk"):
        for scaling in ("per-map", "shared"):
            demo.render_stages(cached, reduction, scaling, "magma", k=3)
            for block in cached.blocks:
                demo.render_crp(cached, block.name, reduction, scaling)
    demo.render_overlay(cached, 0.3)
    demo.render_annotations(cached)
    demo.render_legend(cached)
    demo.render_confidence(cached)
    demo.render_architecture(cached)
    demo.crp_context_markdown(cached, "RefineNet-2")
    assert model.calls == 1
    demo.ablate(segmenter, cached, 32)
    assert model.calls == 2
    demo.ablate(segmenter, cached, 32)  # cached per path
    assert model.calls == 2
    demo.ablate(segmenter, cached, 8)
    assert model.calls == 3


def test_stage_pictures_keep_the_grid_visible(cached):
    items = demo.render_stages(cached, "l2", "per-map", "viridis")
    assert [caption for _, caption in items] == [
        "RefineNet-4 · stride 32 · 32×4×5",
        "RefineNet-3 · stride 16 · 16×8×10",
        "RefineNet-2 · stride 8 · 16×15×20",
        "RefineNet-1 · stride 4 · 16×30×40",
    ]
    # One pixel per cell, at every depth (the browser enlarges them without smoothing).
    assert [picture.shape for picture, _ in items] == [(4, 5, 3), (8, 10, 3), (15, 20, 3), (30, 40, 3)]
    topk = demo.render_stages(cached, "topk", "shared", "viridis", k=2)
    assert len(topk) == 8 and topk[1][1].startswith("RefineNet-4 · channel ") and topk[1][1].endswith("(#2)")


def test_picture_grid_carries_exact_maps_and_escaped_captions():
    import base64
    import io
    import re

    rng = np.random.default_rng(0)
    feature_map = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    photo = np.full((40, 60, 3), 200, dtype=np.uint8)
    html = widgets.picture_grid([(feature_map, 'map <1> & "x"'), (photo, "a photo")], columns=2, photos=frozenset({1}))
    assert "repeat(2," in html
    cells = re.findall(r'<img class="(\w+)" alt="([^"]*)" src="data:image/(\w+);base64,([^"]+)">', html)
    assert [(kind, fmt) for kind, _, fmt, _ in cells] == [("map", "png"), ("photo", "jpeg")]
    assert cells[0][1] == "map &lt;1&gt; &amp; &quot;x&quot;" and "<figcaption>a photo</figcaption>" in html
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(cells[0][3]))))
    assert np.array_equal(decoded, feature_map)  # lossless, one pixel per cell
    assert Image.open(io.BytesIO(base64.b64decode(cells[1][3]))).size == (60, 40)


def test_stage_and_crp_grids_follow_the_model(cached):
    assert demo.stages_grid(cached, "l2").count("<figure>") == len(cached.blocks)
    assert "repeat(2," in demo.stages_grid(cached, "topk", k=2)
    crp = demo.crp_grid(cached, "RefineNet-3", "pca")
    assert crp.count('class="map"') == 9 and crp.count('class="photo"') == 1 and "repeat(5," in crp


def test_a_model_without_crp_shows_its_blocks_input_and_says_why(photo, tmp_path):
    """The CRP ablation variant (0 stages) goes through the demo: the CRP panel holds the block's
    input alone and the text says the model has no pooling chain, instead of failing."""
    torch.manual_seed(0)
    model = refinenet.refinenet_mobilenetv2(num_classes=5, widths=[16, 16, 16, 16], crp_stages=0).eval()
    result = demo.segment(Segmenter(model, device="cpu", max_side=96), photo, model_id="nocrp", out_dir=tmp_path)
    items = demo.render_crp(result, "RefineNet-2")
    assert [caption for _, caption in items] == [
        "input 16×9×12"
    ]  # 200x150 photo at max side 96 -> 96x72, RefineNet-2 at 1/8
    assert demo.crp_grid(result, "RefineNet-2").count("<figure>") == 1
    assert "no CRP stages" in demo.crp_context_markdown(result, "RefineNet-2")


def test_crp_panel_order_and_pooling_windows(cached):
    items = demo.render_crp(cached, "RefineNet-3", "pca", "shared")
    captions = [c for _, c in items]
    assert captions == [
        "input 16×8×10",
        "branch 1 · 5×5 cells",
        "branch 2 · 9×9 cells",
        "branch 3 · 13×13 cells",
        "branch 4 · 17×17 cells",
        "windows 80…272 px",
        "sum after stage 1",
        "sum after stage 2",
        "sum after stage 3",
        "sum after stage 4",
    ]
    context = items[5][0]
    assert context.shape == (120, 160, 3)
    # Stage 1's window is 5 cells x 16 px = 80 px wide, centred: its left edge is at x = 80 - 40.
    assert tuple(context[60, 40]) == demo._CONTEXT_COLOURS[0]
    markdown = demo.crp_context_markdown(cached, "RefineNet-3")
    assert "5×5 cells = 80×80 px" in markdown and "17×17 cells = 272×272 px" in markdown
    with pytest.raises(KeyError):
        demo.render_crp(cached, "RefineNet-9")


def test_overlay_opacity_ends(cached):
    assert np.array_equal(demo.render_overlay(cached, 0.0), cached.display_image)
    full = demo.render_overlay(cached, 1.0)
    assert np.array_equal(full, cached.palette[cached.display_labels])


def test_legend_lists_every_class_with_its_colour_and_share(cached):
    html = demo.render_legend(cached)
    for name, (r, g, b) in zip(CLASSES, PALETTE, strict=True):
        assert name in html and f"#{r:02x}{g:02x}{b:02x}" in html
    best = int(np.argmax(cached.shares))
    assert html.index(CLASSES[best]) == min(html.index(n) for n in CLASSES)  # largest share first
    image, annotations = demo.render_annotations(cached)
    assert {c for _, c in annotations} == set(np.flatnonzero(cached.shares))
    assert sum(mask.sum() for mask, _ in annotations) == image.shape[0] * image.shape[1]


def test_legend_carries_one_see_through_mask_per_class_present(cached):
    """Hovering a legend row shows a mask: each present class has one, tagged with its index,
    in its palette colour where that class was predicted and transparent elsewhere."""
    import base64
    import io
    import re

    html = demo.render_legend(cached)
    masks = dict(re.findall(r'<img class="mask" data-class="(\d+)"[^>]*src="data:image/png;base64,([^"]+)"', html))
    assert sorted(int(c) for c in masks) == sorted(int(c) for c in np.flatnonzero(cached.shares))
    rows = set(re.findall(r'<tr data-class="(\d+)"', html))
    assert rows == {str(i) for i in range(len(CLASSES))}  # every class of the palette has a row
    image, _ = demo.render_annotations(cached)
    labels = resize_nearest(cached.display_labels, image.shape[:2])
    for cls, data in masks.items():
        picture = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGBA")
        rgba = np.asarray(picture)
        shown = rgba[..., 3] > 0
        assert np.array_equal(shown, labels == int(cls))
        assert (rgba[shown][:, :3] == PALETTE[int(cls)]).all()


def test_ablation_compares_like_with_like(counted, cached):
    _, segmenter = counted
    full = segmenter.predict(cached.work_image).label_map
    assert np.array_equal(demo.labels_from_logits(cached.logits, cached.input_size), full)
    view = demo.ablate(segmenter, cached, 32)
    direct = segmenter.predict(cached.work_image, ablate_stride=32).label_map
    assert np.array_equal(cached.ablations[32], direct)
    assert view.changed_fraction == pytest.approx(float((full != direct).mean()))
    assert 0 < view.changed_fraction < 1  # cutting the 1/32 path changes some pixels, not all
    assert "1/32" in view.summary
    assert view.changes.shape == view.overlay.shape == (120, 160, 3)
    with pytest.raises(ValueError, match="stride 4, 8, 16 or 32"):
        demo.ablate(segmenter, cached, 2)


def test_timing_and_architecture_describe_this_run(cached):
    text = demo.timing_markdown(cached, 0.012)
    assert "Image 200×150 px, network input 160×120 px" in text and "rendering the views 12 ms" in text
    html = demo.render_architecture(cached, ablated_stride=8)
    assert "out 16×30×40" in html and "5×30×40" in html and "path switched off" in html


def test_display_size_is_capped_for_large_images(counted, tmp_path):
    _, segmenter = counted
    big = Image.new("RGB", (2400, 1200), (90, 120, 200))
    result = demo.segment(segmenter, big, model_id="tiny", out_dir=tmp_path, display_max_side=300)
    assert result.display_image.shape[:2] == fit_within((1200, 2400), 300) == (150, 300)
    assert Image.open(result.label_png).size == (2400, 1200)


def test_a_dead_block_is_named_and_cuts_the_deeper_paths(tiny_model, photo, tmp_path):
    """With RefineNet-3's adaptation and fusion weights at zero its fused input is 0 everywhere:
    CRP's opening ReLU passes nothing, the block's output no longer depends on the image, and
    the 1/16 and 1/32 paths stop mattering. The demo must say so, and ablation must agree."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for parameter in [*model.refine3.adapt.parameters(), *model.refine3.fusion.parameters()]:
            parameter.zero_()
    segmenter = Segmenter(model, device="cpu", max_side=160)
    result = demo.segment(segmenter, photo, model_id="tiny", out_dir=tmp_path)
    assert demo.dead_blocks(result) == [("RefineNet-3", [16, 32])]
    markdown = demo.crp_context_markdown(result, "RefineNet-1")
    assert "Dead block: RefineNet-3" in markdown and "1/16 and 1/32 paths" in markdown
    captions = [caption for _, caption in demo.render_crp(result, "RefineNet-3", "l2")]
    assert all(c.endswith("all zero") for i, c in enumerate(captions) if i != 5)
    assert "0.0% of the input values are positive" in demo.crp_context_markdown(result, "RefineNet-3")
    assert demo.ablate(segmenter, result, 32).changed_fraction == 0.0
    assert demo.ablate(segmenter, result, 16).changed_fraction == 0.0
    assert demo.ablate(segmenter, result, 8).changed_fraction > 0.0
    healthy = demo.segment(
        Segmenter(copy.deepcopy(tiny_model), device="cpu", max_side=160), photo, model_id="tiny", out_dir=tmp_path
    )
    assert demo.dead_blocks(healthy) == []
    assert "Dead block" not in demo.crp_context_markdown(healthy, "RefineNet-3")


def test_labels_from_logits_is_the_argmax_of_the_upsampled_scores_first_class_on_ties():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 6, 8)).astype(np.float32)
    logits[3] = logits[1] = logits.max(axis=0) + 1.0  # classes 1 and 3 tie everywhere, above the rest
    labels = demo.labels_from_logits(logits, (24, 32))
    assert labels.shape == (24, 32) and labels.dtype == np.uint8
    assert (labels == 1).all()  # the first of the tied classes, as numpy's and torch's argmax
    logits = rng.normal(size=(5, 6, 8)).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(logits)[None], size=(24, 32), mode="bilinear", align_corners=False
    )[0].numpy()
    assert np.array_equal(demo.labels_from_logits(logits, (24, 32)), up.argmax(axis=0))


def test_a_dilated_deepest_level_is_drawn_where_it_ran(photo, tmp_path):
    """At output stride 16 RefineNet-4 keeps its place (the 1/32 level of the paper) but works
    on a 1/16 grid: the context panel counts 16-pixel cells and the diagram says where it ran;
    cutting the 1/32 path still cuts exactly that level."""
    from conftest import calibrate_batch_norm

    torch.manual_seed(0)
    model = refinenet.refinenet_mobilenetv2(num_classes=5, widths=[32, 16, 16, 16], output_stride=16)
    segmenter = Segmenter(calibrate_batch_norm(model).eval(), device="cpu", max_side=160)
    result = demo.segment(segmenter, photo, model_id="tiny", out_dir=tmp_path)
    assert [b.stride for b in result.blocks] == [16, 16, 8, 4]
    # 160x120 network input: 1/16 is a 10x8 grid (at 1/32 it would be 5x4).
    assert "grid of 8×10 cells, one cell = 16×16 pixels" in demo.crp_context_markdown(result, "RefineNet-4")
    html = demo.render_architecture(result)
    assert "320×8×10 · dilated, at 1/16" in html and html.count("dilated") == 1
    assert "Without the **1/32** path" in demo.ablate(segmenter, result, 32).summary
