"""Pictures from arrays: colour LUTs, resampling, reductions, scaling, shares, change maps, diagram.

Expected values are worked out by hand from small arrays, never by the functions under test.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from refinenet.visualize import (
    COLORMAPS,
    DiagramBlock,
    DiagramLevel,
    apply_colormap,
    architecture_svg,
    change_mask,
    channel_l2,
    channel_mean,
    class_shares,
    colormap_lut,
    fit_within,
    label_map_to_png,
    normalize,
    palette_array,
    pca_basis,
    pca_project,
    reduce_feature_maps,
    render_change_map,
    resize_nearest,
    scale_maps,
    top_channels,
    value_range,
)


def luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])


# ----------------------------------------------------------------------------- colour maps


def test_colormap_tables_are_256_uint8_with_the_published_end_colours():
    viridis = colormap_lut("viridis")
    assert viridis.shape == (256, 3) and viridis.dtype == np.uint8
    assert tuple(viridis[0]) == (68, 1, 84) and tuple(viridis[-1]) == (253, 231, 37)
    magma = colormap_lut("magma")
    assert tuple(magma[0]) == (0, 0, 4) and tuple(magma[-1]) == (252, 253, 191)
    assert tuple(colormap_lut("gray")[128]) == (128, 128, 128)


def cie_lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB colours (0 black .. 100 white), the standard's formulas."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116 * np.cbrt(y) - 16, y * (29 / 3) ** 3)


@pytest.mark.parametrize("name", COLORMAPS)
def test_colormaps_grow_lighter_monotonically(name):
    """Perceptual ordering: more value, more lightness everywhere (jet's lightness goes up and
    down). Single 8-bit steps may dip by a rounding error; any 8 steps must climb clearly."""
    lightness = cie_lightness(colormap_lut(name))
    assert np.all(np.diff(lightness) > -0.3)
    assert np.all(lightness[8:] - lightness[:-8] > 1.0)
    assert lightness[-1] - lightness[0] > 60


def test_jet_is_not_offered_and_unknown_maps_are_refused():
    assert "jet" not in COLORMAPS
    with pytest.raises(ValueError, match="unknown colour map"):
        colormap_lut("jet")


def test_apply_colormap_maps_ends_clips_and_treats_nan_as_zero():
    lut = colormap_lut("viridis")
    out = apply_colormap(np.array([[0.0, 1.0, 2.0, -1.0, np.nan, 0.5]]), "viridis")
    assert out.shape == (1, 6, 3)
    expected = [lut[0], lut[255], lut[255], lut[0], lut[0], lut[128]]
    assert np.array_equal(out[0], np.stack(expected))


# ----------------------------------------------------------------------------- resampling


def test_resize_nearest_samples_cell_centres_and_keeps_label_values():
    grid = np.arange(16).reshape(4, 4)
    # Output cell centres at 0.5 and 1.5 of a 2-cell axis fall in input cells 1 and 3.
    assert np.array_equal(resize_nearest(grid, (2, 2)), [[5, 7], [13, 15]])
    labels = np.array([[0, 7], [3, 255]], dtype=np.uint8)
    big = resize_nearest(labels, (5, 7))
    assert big.shape == (5, 7) and set(np.unique(big)) == {0, 3, 7, 255}
    assert np.array_equal(resize_nearest(labels, (4, 4)), labels.repeat(2, axis=0).repeat(2, axis=1))


def test_fit_within_scales_down_never_up():
    assert fit_within((9000, 12000), 960) == (720, 960)
    assert fit_within((100, 50), 960) == (100, 50)
    assert fit_within((1, 5000), 960) == (1, 960)


# ----------------------------------------------------------------------------- reductions


def test_channel_l2_and_mean_per_pixel():
    fmap = np.zeros((2, 1, 2), np.float32)
    fmap[:, 0, 0] = (3, 4)
    fmap[:, 0, 1] = (1, -3)
    assert np.allclose(channel_l2(fmap), [[5.0, np.sqrt(10)]])
    assert np.allclose(channel_mean(fmap), [[3.5, -1.0]])
    assert channel_l2(fmap[None]).shape == (1, 2)  # a batch of one is accepted
    with pytest.raises(ValueError):
        channel_l2(np.zeros((2, 2)))


def test_top_channels_orders_by_energy_and_caps_k():
    fmap = np.zeros((4, 2, 2), np.float32)
    fmap[0] = 1.0  # energy 1
    fmap[1] = -3.0  # energy 9 (sign does not matter)
    fmap[2, 0, 0] = 5.0  # energy 25 / 4
    assert list(top_channels(fmap, 3)) == [1, 2, 0]
    assert len(top_channels(fmap, 10)) == 4


def test_pca_finds_the_direction_along_which_pixels_vary():
    rng = np.random.default_rng(0)
    direction = np.array([0.0, -3.0, 0.0, 4.0]) / 5.0  # largest loading (+0.8) already positive
    amount = rng.normal(size=(6, 7)).astype(np.float32)
    fmap = direction[:, None, None] * amount[None] * 10 + rng.normal(scale=0.01, size=(4, 6, 7))
    mean, basis = pca_basis([fmap])
    assert basis.shape == (3, 4)
    assert np.allclose(basis[0], direction, atol=1e-3)
    projected = pca_project(fmap, mean, basis)
    assert projected.shape == (6, 7, 3)
    assert np.corrcoef(projected[..., 0].ravel(), amount.ravel())[0, 1] > 0.999


def test_pca_sign_is_fixed_by_the_largest_loading():
    rng = np.random.default_rng(1)
    amount = rng.normal(size=(5, 5))
    fmap = np.stack([-2.0 * amount, 0.5 * amount, 0 * amount])
    basis = pca_basis([fmap])[1]
    assert basis[0, 0] > 0 > basis[0, 1]  # flipped so that the -2 channel loads positively


def test_shared_pca_needs_equal_widths():
    with pytest.raises(ValueError, match="equal channel counts"):
        pca_basis([np.zeros((4, 2, 2)), np.zeros((8, 2, 2))])


def test_pca_with_fewer_channels_than_components_pads_with_zeros():
    fmap = np.random.default_rng(2).normal(size=(2, 4, 4))
    assert pca_basis([fmap])[1].shape == (3, 2)


# ----------------------------------------------------------------------------- scaling


def test_value_range_and_normalize():
    values = np.concatenate([np.zeros(50), np.full(50, 10.0)])
    assert value_range([values]) == (0.0, 10.0)
    assert np.allclose(normalize(np.array([-5.0, 0.0, 5.0, 10.0, 20.0]), 0.0, 10.0), [0, 0, 0.5, 1, 1])
    assert np.all(normalize(np.full(3, 7.0), 7.0, 7.0) == 0)  # a flat map is dark, not NaN


@pytest.mark.parametrize("scaling", ["per-map", "shared"])
def test_three_component_maps_scale_each_component_on_its_own_range(scaling):
    rng = np.random.default_rng(3)
    maps = [
        rng.normal(size=(h, w, 3)).astype(np.float32) * [1.0, 10.0, 0.1] + [0.0, 5.0, -2.0]
        for h, w in ((12, 15), (24, 30))
    ]
    maps[1][..., 2] = 4.0  # a flat component: dark, not NaN
    scaled = scale_maps(maps, scaling)
    for k in range(3):
        channel = [m[..., k] for m in maps]
        if scaling == "shared":
            lo, hi = value_range(channel)
            expected = [normalize(c, lo, hi) for c in channel]
        else:
            expected = [normalize(c, *value_range([c])) for c in channel]
        for got, want in zip(scaled, expected, strict=True):
            np.testing.assert_allclose(got[..., k], want, atol=1e-6)
    if scaling == "per-map":
        assert np.all(scaled[1][..., 2] == 0)


def test_per_map_scaling_stretches_each_map_shared_scaling_compares_them():
    weak = np.array([[0.0, 1.0]] * 50)
    strong = np.array([[0.0, 10.0]] * 50)
    per_map = scale_maps([weak, strong], "per-map")
    assert per_map[0].max() == pytest.approx(1.0) and per_map[1].max() == pytest.approx(1.0)
    shared = scale_maps([weak, strong], "shared")
    assert shared[0].max() == pytest.approx(0.1) and shared[1].max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown scaling"):
        scale_maps([weak], "global")


def test_scaling_of_rgb_maps_is_per_component():
    rgb = np.zeros((10, 10, 3), np.float32)
    rgb[:5, :, 0] = 1.0  # red component: 0 or 1
    rgb[:5, :, 2] = 1000.0  # blue component: 0 or 1000
    out = scale_maps([rgb], "per-map")[0]
    assert out[..., 0].max() == pytest.approx(1.0) and out[..., 2].max() == pytest.approx(1.0)


def test_reduce_feature_maps_l2_shared_shows_the_stronger_map_brighter():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(8, 6, 6)).astype(np.float32)
    maps = [a, 3 * a]
    per_map = reduce_feature_maps(maps, ["a", "3a"], "l2", "per-map")
    assert np.array_equal(per_map[0].rgb, per_map[1].rgb)  # same pattern, each stretched to its range
    shared = reduce_feature_maps(maps, ["a", "3a"], "l2", "shared")
    assert luma(shared[1].rgb).mean() > luma(shared[0].rgb).mean() + 40
    assert shared[0].rgb.shape == (6, 6, 3) and shared[0].rgb.dtype == np.uint8
    assert [m.caption for m in shared] == ["a", "3a"]


def test_reduce_feature_maps_pca_shared_basis_gives_equal_features_equal_colours():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(5, 4, 4)).astype(np.float32)
    b = a[:, ::-1, :].copy()  # the same feature vectors, elsewhere
    shared = reduce_feature_maps([a, b], ["a", "b"], "pca", "shared")
    assert np.array_equal(shared[0].rgb[::-1], shared[1].rgb)


def test_reduce_feature_maps_pca_accepts_different_widths():
    rng = np.random.default_rng(5)
    out = reduce_feature_maps(
        [rng.normal(size=(8, 3, 4)), rng.normal(size=(4, 6, 8))], ["deep", "fine"], "pca", "shared"
    )
    assert [m.rgb.shape for m in out] == [(3, 4, 3), (6, 8, 3)]


def test_reduce_feature_maps_topk_returns_the_strongest_channels_in_order():
    fmap = np.zeros((5, 2, 2), np.float32)
    fmap[3] = 4.0
    fmap[1] = 2.0
    fmap[4, 0, 0] = 1.0
    out = reduce_feature_maps([fmap, fmap], ["x", "y"], "topk", "per-map", "magma", k=2)
    assert [m.caption for m in out] == [
        "x · channel 3 (#1)",
        "x · channel 1 (#2)",
        "y · channel 3 (#1)",
        "y · channel 1 (#2)",
    ]


def test_reduce_feature_maps_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown reduction"):
        reduce_feature_maps([np.zeros((2, 2, 2))], ["x"], "max")
    with pytest.raises(ValueError, match="one caption per"):
        reduce_feature_maps([np.zeros((2, 2, 2))], [], "l2")


# ----------------------------------------------------------------------------- labels


def test_class_shares_counts_pixels_per_class():
    shares = class_shares(np.array([[0, 0], [1, 3]]), 4)
    assert np.allclose(shares, [0.5, 0.25, 0.0, 0.25])
    assert np.allclose(class_shares(np.zeros((0, 0), np.uint8), 3), 0)


def test_label_png_is_lossless_palette_png():
    labels = np.array([[0, 1, 2], [10, 255, 3]], dtype=np.uint8)
    palette = palette_array([[1, 2, 3], [4, 5, 6]], 11)
    buffer = io.BytesIO()
    label_map_to_png(labels, palette).save(buffer, format="PNG")
    reloaded = Image.open(io.BytesIO(buffer.getvalue()))
    assert reloaded.format == "PNG" and reloaded.mode == "P"
    assert np.array_equal(np.asarray(reloaded), labels)
    assert reloaded.getpalette()[:6] == [1, 2, 3, 4, 5, 6]


def test_change_mask_and_change_map_paint_changed_pixels_in_their_new_colour():
    palette = palette_array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], 3)
    image = np.full((2, 2, 3), 200, np.uint8)
    before = np.array([[0, 1], [1, 2]])
    after = np.array([[0, 2], [1, 1]])
    assert np.array_equal(change_mask(before, after), [[False, True], [False, True]])
    out = render_change_map(image, before, after, palette)
    assert tuple(out[0, 1]) == (0, 0, 255) and tuple(out[1, 1]) == (255, 0, 0)
    for y, x in ((0, 0), (1, 0)):  # unchanged: dimmed grey
        assert out[y, x, 0] == out[y, x, 1] == out[y, x, 2] < 200
    with pytest.raises(ValueError):
        change_mask(before, after[:1])


# ----------------------------------------------------------------------------- diagram


def _diagram(ablated=None, cascade="4"):
    levels = [
        DiagramLevel(4, 24, (60, 80)),
        DiagramLevel(8, 32, (30, 40)),
        DiagramLevel(16, 96, (15, 20)),
        DiagramLevel(32, 320, (8, 10)),
    ]
    if cascade == "4":
        blocks = [
            DiagramBlock("RefineNet-4", 32, (32,), (512, 8, 10)),
            DiagramBlock("RefineNet-3", 16, (16,), (256, 15, 20)),
            DiagramBlock("RefineNet-2", 8, (8,), (256, 30, 40)),
            DiagramBlock("RefineNet-1", 4, (4,), (256, 60, 80)),
        ]
    else:
        blocks = [
            DiagramBlock("RefineNet-1", 4, (4, 8, 16, 32), (256, 60, 80), adapt_rcus=0, output_rcus=0, kernel_size=1)
        ]
    return architecture_svg((240, 320), "mobilenetv2", levels, blocks, 11, (60, 80), (480, 640), ablated)


def _lines(svg: str):
    root = ET.fromstring(svg)
    return [e for e in root.iter() if e.tag.endswith("line")]


def test_architecture_svg_is_valid_and_carries_this_runs_shapes():
    svg = _diagram()
    root = ET.fromstring(svg)
    texts = " | ".join(e.text or "" for e in root.iter() if e.tag.endswith("text"))
    for expected in (
        "RefineNet-4",
        "RefineNet-3",
        "RefineNet-2",
        "RefineNet-1",
        "out 512×8×10",
        "out 256×60×80",
        "mobilenetv2 · 1/32",
        "320×8×10",
        "3×240×320",
        "11×60×80",
        "CRP×4",
        "RCU×2",
        "prediction 480×640",
    ):
        assert expected in texts, expected
    # 4 backbone steps + 4 level-to-block paths + 3 coarse paths + 1 into the classifier, none dashed.
    lines = _lines(svg)
    assert len(lines) == 12
    assert not any(e.get("stroke-dasharray") for e in lines)


def test_architecture_svg_draws_the_ablated_path_dashed():
    lines = _lines(_diagram(ablated=16))
    dashed = [e for e in lines if e.get("stroke-dasharray")]
    assert len(dashed) == 1 and dashed[0].get("stroke") == "#c62828"
    assert "path switched off" in _diagram(ablated=16)


def test_architecture_svg_single_block_cascade_takes_every_level():
    svg = _diagram(cascade="1")
    assert svg.count(">RefineNet-") == 1
    assert len(_lines(svg)) == 4 + 4 + 0 + 1
    assert "RCU×" not in svg and "1×1 convs" in svg
