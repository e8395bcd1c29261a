"""Turning model outputs into pictures: palettes, label-map colouring and overlays.

Everything here works on numpy arrays with lookup tables (no matplotlib figure per map), so the
app can re-render views quickly from cached activations.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np
import torch
from PIL import Image


def pascal_voc_palette(num_colours: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map (``num_colours x 3`` uint8), built from the bits of
    the class index, so that any number of classes gets distinct, reproducible colours."""
    palette = np.zeros((num_colours, 3), dtype=np.uint8)
    for index in range(num_colours):
        c, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


def palette_array(palette: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray:
    """A model's palette as a ``256 x 3`` uint8 lookup table (VOC colours where none is given)."""
    table = pascal_voc_palette(256)
    if palette is not None:
        given = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
        table[: len(given)] = given
    if num_classes > 256:
        raise ValueError("label maps with more than 256 classes cannot be palette PNGs")
    return table


def colorize(label_map: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """``H x W`` class indices to an ``H x W x 3`` uint8 RGB image through the lookup table."""
    return palette[np.asarray(label_map, dtype=np.int64) % len(palette)]


def label_map_to_png(label_map: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A lossless palette ("P" mode) PNG-ready image: pixel values are the class indices, so the
    file is both a picture and the exact label map."""
    if label_map.max(initial=0) > 255 or label_map.min(initial=0) < 0:
        raise ValueError("class indices must lie in 0..255 to be stored in a palette PNG")
    image = Image.fromarray(np.asarray(label_map, dtype=np.uint8), mode="P")
    image.putpalette(palette.astype(np.uint8).reshape(-1).tolist())
    return image


def class_mask_image(mask: np.ndarray, colour: Sequence[int]) -> Image.Image:
    """One class's mask as a two-colour palette image: ``colour`` where ``mask`` is set,
    transparent elsewhere. As a PNG it is a 1-byte-per-pixel file that compresses to a few
    kilobytes, the cheapest way to hand a browser a coloured, see-through mask."""
    image = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, *(int(c) for c in colour[:3])])
    image.info["transparency"] = 0
    return image


def overlay(
    image: Image.Image | np.ndarray, label_map: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the coloured label map over the RGB image; ``alpha`` is the label opacity (0..1)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    colours = colorize(label_map, palette).astype(np.float32)
    if rgb.shape[:2] != colours.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and label map {colours.shape[:2]} differ in size")
    alpha = float(np.clip(alpha, 0.0, 1.0))
    return np.clip(rgb * (1 - alpha) + colours * alpha + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Perceptually uniform colour maps as numpy lookup tables.
#
# Each map is stored as 17 anchor colours, evenly spaced from 0 to 1, and expanded once into a
# 256-entry table by linear interpolation. The anchors of "viridis" and "magma" were sampled
# from the colour maps of van der Walt and Smith, released into the public domain (CC0); the
# interpolated tables differ from the originals by at most 6/255 per channel, far below what
# the eye separates. Lightness rises monotonically in every map, so brighter always means
# "more", which a rainbow map such as jet does not promise.
# ---------------------------------------------------------------------------------------------

_COLORMAP_ANCHORS: dict[str, tuple[tuple[int, int, int], ...]] = {
    "viridis": (
        (68, 1, 84),
        (72, 24, 106),
        (71, 45, 123),
        (66, 64, 134),
        (59, 82, 139),
        (51, 99, 141),
        (44, 114, 142),
        (38, 130, 142),
        (33, 145, 140),
        (31, 160, 136),
        (40, 174, 128),
        (63, 188, 115),
        (94, 201, 98),
        (132, 212, 75),
        (173, 220, 48),
        (216, 226, 25),
        (253, 231, 37),
    ),
    "magma": (
        (0, 0, 4),
        (10, 8, 34),
        (29, 17, 71),
        (54, 16, 107),
        (81, 18, 124),
        (106, 28, 129),
        (131, 38, 129),
        (156, 46, 127),
        (183, 55, 121),
        (208, 65, 111),
        (231, 82, 99),
        (245, 107, 92),
        (252, 137, 97),
        (254, 167, 114),
        (254, 196, 136),
        (253, 226, 163),
        (252, 253, 191),
    ),
    "gray": ((0, 0, 0), (255, 255, 255)),
}

COLORMAPS: tuple[str, ...] = tuple(_COLORMAP_ANCHORS)
_LUT_CACHE: dict[str, np.ndarray] = {}


def colormap_lut(name: str = "viridis") -> np.ndarray:
    """The ``256 x 3`` uint8 lookup table of a perceptually uniform colour map."""
    if name not in _COLORMAP_ANCHORS:
        raise ValueError(f"unknown colour map {name!r}; choose one of {', '.join(COLORMAPS)}")
    if name not in _LUT_CACHE:
        anchors = np.asarray(_COLORMAP_ANCHORS[name], dtype=np.float64)
        positions = np.linspace(0.0, 1.0, len(anchors))
        steps = np.linspace(0.0, 1.0, 256)
        table = np.stack([np.interp(steps, positions, anchors[:, c]) for c in range(3)], axis=1)
        lut = np.clip(np.rint(table), 0, 255).astype(np.uint8)
        lut.flags.writeable = False
        _LUT_CACHE[name] = lut
    return _LUT_CACHE[name]


def apply_colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Colour an ``H x W`` map of values in [0, 1] (clipped; NaN counts as 0) through a LUT."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    index = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return colormap_lut(name)[index]


# ---------------------------------------------------------------------------------------------
# Resampling for display: nearest neighbour, so that label maps keep exact class values and a
# cell of a coarse map stays a flat square instead of being smoothed into false detail.
# ---------------------------------------------------------------------------------------------


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``H x W (x C)`` to ``size = (height, width)``.

    Cell ``i`` of the output samples the input cell whose span contains the output cell's
    centre, so label maps keep exact class values and block maps keep their grid.
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {size}")
    array = np.asarray(array)
    rows = ((np.arange(height) + 0.5) * array.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * array.shape[1] / width).astype(np.int64)
    return array[np.minimum(rows, array.shape[0] - 1)][:, np.minimum(cols, array.shape[1] - 1)]


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled down (never up) so that the longer side is at most ``max_side``."""
    height, width = size
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


# ---------------------------------------------------------------------------------------------
# Feature-map reductions: a C x H x W activation has far more channels than a screen has colours,
# so each view reduces the channels to one value (norm, mean), three values (PCA to RGB) or a few
# chosen channels (top-k), and then scales the result into [0, 1] for a colour map.
# ---------------------------------------------------------------------------------------------

REDUCTIONS: dict[str, str] = {
    "pca": "PCA to RGB",
    "l2": "channel L2 norm",
    "mean": "channel mean",
    "topk": "top-k channels",
}
SCALINGS: dict[str, str] = {"per-map": "per map", "shared": "shared across maps"}


def _as_chw(fmap: np.ndarray) -> np.ndarray:
    """A ``C x H x W`` float32 array; half precision (the app's cache) is widened by torch, whose
    vectorised conversion is about ten times faster than numpy's."""
    fmap = np.asarray(fmap)
    if fmap.dtype == np.float16:
        fmap = torch.from_numpy(fmap).float().numpy()  # any strides (the cache is channels-last)
    fmap = np.asarray(fmap, dtype=np.float32)
    if fmap.ndim == 4:
        if fmap.shape[0] != 1:
            raise ValueError(f"expected a single feature map, got a batch of {fmap.shape[0]}")
        fmap = fmap[0]
    if fmap.ndim != 3:
        raise ValueError(f"expected a C x H x W feature map, got shape {fmap.shape}")
    return fmap


def channel_l2(fmap: np.ndarray) -> np.ndarray:
    """``H x W`` Euclidean norm over the channels: how strongly a location responds at all."""
    fmap = _as_chw(fmap)
    return np.sqrt(np.einsum("chw,chw->hw", fmap, fmap))


def channel_mean(fmap: np.ndarray) -> np.ndarray:
    """``H x W`` mean over the channels (signed: positive and negative responses cancel)."""
    return _as_chw(fmap).mean(axis=0)


def top_channels(fmap: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` channels with the highest mean squared activation, strongest first."""
    fmap = _as_chw(fmap)
    if k < 1:
        raise ValueError("k must be at least 1")
    energy = np.einsum("chw,chw->c", fmap, fmap) / max(1, fmap.shape[1] * fmap.shape[2])
    order = np.argsort(-energy, kind="stable")
    return order[: min(k, len(order))]


def pca_basis(
    fmaps: Sequence[np.ndarray], components: int = 3, max_samples: int = 2048, seed: int = 0, power_iterations: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Mean (``C``) and the top principal directions (``components x C``) of the pixel vectors.

    Every pixel of every map is one ``C``-dimensional sample (a random subset of ``max_samples``
    when there are more, which changes the basis negligibly). Only three directions are wanted
    out of ``C`` (128 to 512), so they are found by randomized subspace iteration (Halko,
    Martinsson and Tropp 2011) on the centred samples in float32: a few products with a
    ``C x (components + 5)`` block instead of forming and fully diagonalising the ``C x C``
    covariance, about 20x less work, and as exact as the pictures need on feature maps, whose
    leading variances stand well apart. One power iteration is enough: what limits the agreement
    with exact PCA of all pixels is the pixel sample (hence ``max_samples``), not the number of
    iterations. The sign of a direction is arbitrary; each is flipped so that its largest loading
    is positive, making the colours reproducible from run to run.
    """
    maps = [_as_chw(f) for f in fmaps]
    channels = {m.shape[0] for m in maps}
    if len(channels) != 1:
        raise ValueError(f"a shared PCA basis needs equal channel counts, got {sorted(channels)}")
    # One row per pixel: a free view of a channels-last map (the app's cache), a copy otherwise.
    rows = [torch.from_numpy(m).permute(1, 2, 0).reshape(-1, m.shape[0]) for m in maps]
    pixels = rows[0] if len(rows) == 1 else torch.cat(rows)  # N x C
    generator = torch.Generator().manual_seed(seed)
    if len(pixels) > max_samples:
        picks = torch.randperm(len(pixels), generator=generator)[:max_samples].sort().values
        pixels = pixels.index_select(0, picks)
    mean = pixels.mean(dim=0)
    centred = (pixels - mean).contiguous()
    width = min(components + 5, *centred.shape)
    basis = torch.zeros(0, centred.shape[1])
    if width > 0:
        # Range finder: an orthonormal basis Q of (X X^T)^q X G approximates the leading left
        # singular space of X; the SVD of the small Q^T X then gives the right singular
        # vectors, i.e. the principal directions.
        transposed = centred.T.contiguous()
        q = torch.linalg.qr(centred @ torch.randn(centred.shape[1], width, generator=generator)).Q
        for _ in range(power_iterations):
            q = torch.linalg.qr(centred @ (transposed @ q)).Q
        _, singular, directions = torch.linalg.svd(q.T @ centred, full_matrices=False)
        if singular[0] > 0:
            basis = directions[: min(components, int((singular > singular[0] * 1e-6).sum()))]
    if len(basis):
        largest = basis.gather(1, basis.abs().argmax(dim=1, keepdim=True))
        basis = basis * torch.where(largest < 0, -1.0, 1.0)
    if len(basis) < components:  # fewer channels than components: pad with zero directions
        basis = torch.cat([basis, torch.zeros(components - len(basis), centred.shape[1])])
    return mean.numpy(), basis.numpy()


def pca_project(fmap: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``H x W x components``: the map's pixel vectors in a PCA basis (unscaled)."""
    fmap = _as_chw(fmap)
    channels, height, width = fmap.shape
    basis_t = torch.from_numpy(np.asarray(basis, dtype=np.float32))
    mean_t = torch.from_numpy(np.asarray(mean, dtype=np.float32))
    # One matrix product, (H W) x C times C x k, on one row per pixel (a free view of a
    # channels-last map), and the mean's share subtracted after it.
    rows = torch.from_numpy(fmap).permute(1, 2, 0).reshape(-1, channels)
    projected = rows @ basis_t.T - basis_t @ mean_t
    return projected.reshape(height, width, len(basis_t)).numpy()


def value_range(arrays: Sequence[np.ndarray], low: float = 1.0, high: float = 99.0) -> tuple[float, float]:
    """Robust ``(lo, hi)`` of the values of all ``arrays`` together (percentiles, so that a few
    extreme activations do not wash out the rest of the map)."""
    values = np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low, high])
    return float(lo), float(hi)


def normalize(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto ``[0, 1]`` (clipped). A constant map becomes all zeros."""
    array = np.asarray(array, dtype=np.float32)
    if not hi > lo:
        return np.zeros_like(array)
    return np.clip((array - lo) / (hi - lo), 0.0, 1.0)


def scale_maps(maps: Sequence[np.ndarray], scaling: str = "per-map") -> list[np.ndarray]:
    """Scale each map into [0, 1]: on its own range (``"per-map"``, shows structure inside every
    map) or on the range of all maps together (``"shared"``, shows which map is stronger).

    For ``H x W x 3`` maps (PCA) each of the three components gets its own range.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose one of {', '.join(SCALINGS)}")
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    if not maps:
        return []
    if maps[0].ndim == 3:  # H x W x k (PCA): every component on its own range
        return _scale_components(maps, scaling)
    if scaling == "shared":
        lo, hi = value_range(maps)
        return [normalize(m, lo, hi) for m in maps]
    return [normalize(m, *value_range([m])) for m in maps]


def _scale_components(maps: list[np.ndarray], scaling: str, low: float = 1.0, high: float = 99.0) -> list[np.ndarray]:
    """:func:`scale_maps` for ``H x W x k`` maps: the percentiles of all ``k`` components in one
    call per map (or one for all maps when ``"shared"``), rather than one call per component."""
    components = maps[0].shape[2]
    rows = [m.reshape(-1, components) for m in maps]
    if not all(r.size and np.isfinite(r).all() for r in rows):  # rare: value_range handles them
        out = [np.empty_like(m) for m in maps]
        for k in range(components):
            for target, scaled in zip(out, scale_maps([m[..., k] for m in maps], scaling), strict=True):
                target[..., k] = scaled
        return out
    if scaling == "shared":
        ranges = [np.percentile(np.concatenate(rows), [low, high], axis=0)] * len(maps)
    else:
        ranges = [np.percentile(r, [low, high], axis=0) for r in rows]
    out = []
    for m, (lo, hi) in zip(maps, ranges, strict=True):
        span = hi - lo
        flat = ~(span > 0)  # a flat component is dark, as in normalize
        scaled = np.clip((m - lo) / np.where(flat, 1.0, span), 0.0, 1.0)
        scaled[..., flat] = 0.0
        out.append(scaled.astype(np.float32, copy=False))
    return out


@dataclass
class ReducedMap:
    """One picture made from a feature map: ``rgb`` at the map's own resolution, a caption."""

    rgb: np.ndarray
    caption: str


def reduce_feature_maps(
    fmaps: Sequence[np.ndarray],
    captions: Sequence[str],
    reduction: str = "pca",
    scaling: str = "per-map",
    colormap: str = "viridis",
    k: int = 4,
    shared_basis: bool | None = None,
) -> list[ReducedMap]:
    """Turn ``C x H x W`` maps into RGB pictures (``H x W x 3`` uint8) with a reduction and scaling.

    ``"pca"`` projects the channels on the top three principal directions and shows them as red,
    green and blue: pixels of similar colour have similar feature vectors. With ``"shared"``
    scaling and equal channel counts the maps share one PCA basis, so equal colours mean equal
    features across maps; with different channel counts (RefineNet-4 is often wider) each map
    gets its own basis and only the intensity range is shared. ``shared_basis=True`` asks for one
    basis whatever the scaling, for maps that live in one feature space (a CRP's input, branches
    and running sums). ``"topk"`` returns ``k`` pictures per map, the channels with the highest
    energy.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
    if len(fmaps) != len(captions):
        raise ValueError("one caption per feature map is needed")
    fmaps = [_as_chw(f) for f in fmaps]
    if not fmaps:
        return []
    if reduction == "pca":
        same_width = len({f.shape[0] for f in fmaps}) == 1
        if same_width and (scaling == "shared" if shared_basis is None else shared_basis):
            mean, basis = pca_basis(fmaps)
            projections = [pca_project(f, mean, basis) for f in fmaps]
        else:
            projections = [pca_project(f, *pca_basis([f])) for f in fmaps]
        scaled = scale_maps(projections, scaling)
        return [
            ReducedMap(np.clip(np.rint(s * 255), 0, 255).astype(np.uint8), c)
            for s, c in zip(scaled, captions, strict=True)
        ]
    if reduction in ("l2", "mean"):
        reduce = channel_l2 if reduction == "l2" else channel_mean
        scaled = scale_maps([reduce(f) for f in fmaps], scaling)
        return [ReducedMap(apply_colormap(s, colormap), c) for s, c in zip(scaled, captions, strict=True)]
    channels = [top_channels(f, k) for f in fmaps]
    singles = [f[idx] for f, idx in zip(fmaps, channels, strict=True)]
    flat = [m for group in singles for m in group]
    remaining = iter(scale_maps(flat, scaling))
    out = []
    for idx, caption in zip(channels, captions, strict=True):
        for rank, channel in enumerate(idx, start=1):
            out.append(
                ReducedMap(apply_colormap(next(remaining), colormap), f"{caption} · channel {int(channel)} (#{rank})")
            )
    return out


# ---------------------------------------------------------------------------------------------
# Class statistics and ablation change maps.
# ---------------------------------------------------------------------------------------------


def class_shares(label_map: np.ndarray, num_classes: int) -> np.ndarray:
    """Fraction of the pixels given to each class (``num_classes`` floats summing to 1)."""
    labels = np.asarray(label_map).reshape(-1)
    if labels.size == 0:
        return np.zeros(num_classes, dtype=np.float64)
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes)[:num_classes]
    return counts / labels.size


def change_mask(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Boolean ``H x W``: where two label maps of the same size disagree."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape:
        raise ValueError(f"label maps differ in size: {before.shape} and {after.shape}")
    return before != after


def render_change_map(
    image: Image.Image | np.ndarray, before: np.ndarray, after: np.ndarray, palette: np.ndarray
) -> np.ndarray:
    """The image in dimmed grey, with every pixel whose class changed painted in its *new*
    class colour: unchanged regions recede, the effect of the ablation stands out."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    changed = change_mask(before, after)
    if rgb.shape[:2] != changed.shape:
        raise ValueError(f"image {rgb.shape[:2]} and label maps {changed.shape} differ in size")
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    out = np.repeat((grey * 0.35 + 20.0)[..., None], 3, axis=2)
    out[changed] = colorize(np.asarray(after)[changed], palette)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The architecture diagram: an SVG of the cascade drawn from the model's configuration and the
# tensor shapes of one run, so students see the very sizes the panels show.
# ---------------------------------------------------------------------------------------------


@dataclass
class DiagramLevel:
    """One backbone level: its stride as the paper names it, channel count and spatial size in
    this run, and the stride it was computed at where that differs (a dilated deepest level)."""

    stride: int
    channels: int
    size: tuple[int, int]
    computed_stride: int | None = None


@dataclass
class DiagramBlock:
    """One RefineNet block as the diagram draws it.

    ``levels`` are the strides of the backbone levels it fuses (finest first); ``shape`` is its
    output ``(C, H, W)``; the counts describe its components (0 RCUs for Light-Weight RefineNet).
    """

    name: str
    stride: int
    levels: tuple[int, ...]
    shape: tuple[int, int, int]
    adapt_rcus: int = 2
    output_rcus: int = 3
    crp_stages: int = 4
    kernel_size: int = 3


def _svg_text(
    x: float, y: float, text: str, size: int = 12, weight: str = "normal", anchor: str = "middle", fill: str = "#1f2933"
) -> str:
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" text-anchor="{anchor}" '
        f'fill="{fill}" font-family="sans-serif">{escape(text)}</text>'
    )


def _svg_arrow(x1: float, y1: float, x2: float, y2: float, colour: str = "#52606d", dashed: bool = False) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (
        f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" stroke-width="2"'
        f'{dash} marker-end="url(#arrow)"/>'
    )


def _svg_box(x: float, y: float, w: float, h: float, fill: str, stroke: str, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="8" fill="{fill}" '
        f'stroke="{stroke}" stroke-width="1.5"{dash}/>'
    )


def _shape(c: int, h: int, w: int) -> str:
    return f"{c}×{h}×{w}"


def architecture_svg(
    input_size: tuple[int, int],
    backbone: str,
    levels: Sequence[DiagramLevel],
    blocks: Sequence[DiagramBlock],
    num_classes: int,
    logits_size: tuple[int, int],
    output_size: tuple[int, int] | None = None,
    ablated_stride: int | None = None,
    title: str = "",
) -> str:
    """An SVG of the multi-path refinement cascade, laid out like the paper's Fig. 2.

    Top row: the input and the backbone levels from 1/4 to 1/32 (left to right, deeper).
    Bottom row: the RefineNet blocks under the levels they fuse, RefineNet-4 on the right; the
    coarse path runs right to left, and the classifier on the left predicts at 1/4. Every box
    carries this run's tensor shape (``C×H×W``). ``ablated_stride`` draws that backbone path
    dashed in red, as switched off.
    """
    strides = sorted(level.stride for level in levels)
    column = {stride: i + 1 for i, stride in enumerate(strides)}
    col_w, box_w, margin = 200, 176, 12
    top_y, top_h, bottom_y, bottom_h = 36, 62, 176, 112
    width = margin * 2 + col_w * (len(strides) + 1)
    height = bottom_y + bottom_h + 70

    def cx(col: float) -> float:
        return margin + col * col_w + col_w / 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px" role="img" aria-label="RefineNet architecture diagram">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#52606d"/></marker></defs>',
        '<rect x="0" y="0" width="100%" height="100%" fill="#ffffff"/>',
    ]
    if title:
        parts.append(_svg_text(margin, 20, title, size=14, weight="bold", anchor="start"))
    # Top row: input and backbone levels.
    h_in, w_in = input_size
    parts.append(_svg_box(cx(0) - box_w / 2, top_y, box_w, top_h, "#e4e7eb", "#7b8794"))
    parts.append(_svg_text(cx(0), top_y + 24, "Input image", weight="bold"))
    parts.append(_svg_text(cx(0), top_y + 44, _shape(3, h_in, w_in)))
    previous_x = cx(0) + box_w / 2
    for level in sorted(levels, key=lambda lv: lv.stride):
        x = cx(column[level.stride])
        off = level.stride == ablated_stride
        parts.append(_svg_arrow(previous_x, top_y + top_h / 2, x - box_w / 2, top_y + top_h / 2))
        parts.append(_svg_box(x - box_w / 2, top_y, box_w, top_h, "#dbeafe", "#3b6fb6"))
        parts.append(_svg_text(x, top_y + 22, f"{backbone} · 1/{level.stride}", weight="bold"))
        # A dilated level keeps its place in the cascade but not its resolution: say where it ran.
        dilated = f" · dilated, at 1/{level.computed_stride}" if level.computed_stride else ""
        parts.append(_svg_text(x, top_y + 42, _shape(level.channels, *level.size) + dilated))
        previous_x = x + box_w / 2
        if off:
            parts.append(_svg_text(x, top_y + top_h + 16, "path switched off", size=11, weight="bold", fill="#c62828"))
    # Bottom row: RefineNet blocks, each under the levels it fuses.
    block_boxes = []
    for block in blocks:
        cols = [column[s] for s in block.levels if s in column]
        left, right = min(cols), max(cols)
        x0 = cx(left) - box_w / 2
        w = cx(right) - cx(left) + box_w
        block_boxes.append((x0, w))
        parts.append(_svg_box(x0, bottom_y, w, bottom_h, "#fdebd3", "#c2410c"))
        centre = x0 + w / 2
        parts.append(_svg_text(centre, bottom_y + 20, block.name, size=13, weight="bold"))
        fuses = len(block.levels) + (block is not blocks[0]) > 1
        first = ([f"RCU×{block.adapt_rcus}"] if block.adapt_rcus else []) + ["MRF" if fuses else "MRF (1 path)"]
        second = [f"CRP×{block.crp_stages}"] + ([f"RCU×{block.output_rcus}"] if block.output_rcus else [])
        parts.append(_svg_text(centre, bottom_y + 40, " → ".join(first) + " →", size=11))
        parts.append(_svg_text(centre, bottom_y + 56, " → ".join(second), size=11))
        parts.append(
            _svg_text(
                centre,
                bottom_y + 76,
                f"{block.kernel_size}×{block.kernel_size} convs · stride {block.stride}",
                size=11,
                fill="#52606d",
            )
        )
        parts.append(_svg_text(centre, bottom_y + 98, "out " + _shape(*block.shape), size=12, weight="bold"))
        for stride in block.levels:
            if stride not in column:
                continue
            x = cx(column[stride])
            off = stride == ablated_stride
            parts.append(
                _svg_arrow(
                    x,
                    top_y + top_h + (22 if off else 0),
                    x,
                    bottom_y,
                    colour="#c62828" if off else "#52606d",
                    dashed=off,
                )
            )
    # Coarse path: each block's output feeds the next (finer) block, right to left.
    for (x_prev, _), (x_next, w_next) in itertools.pairwise(block_boxes):
        parts.append(_svg_arrow(x_prev, bottom_y + bottom_h / 2, x_next + w_next, bottom_y + bottom_h / 2))
    # Classifier and output on the left.
    last_x = block_boxes[-1][0] if block_boxes else cx(1) - box_w / 2
    parts.append(_svg_box(cx(0) - box_w / 2, bottom_y, box_w, bottom_h, "#dcfce7", "#15803d"))
    parts.append(_svg_text(cx(0), bottom_y + 20, "Classifier", size=13, weight="bold"))
    parts.append(_svg_text(cx(0), bottom_y + 42, "3×3 conv → class scores", size=11))
    parts.append(_svg_text(cx(0), bottom_y + 64, _shape(num_classes, *logits_size), size=12, weight="bold"))
    parts.append(_svg_text(cx(0), bottom_y + 88, "bilinear ×4 → label map", size=11))
    parts.append(_svg_arrow(last_x, bottom_y + bottom_h / 2, cx(0) + box_w / 2, bottom_y + bottom_h / 2))
    out_h, out_w = output_size if output_size is not None else input_size
    parts.append(_svg_text(cx(0), bottom_y + bottom_h + 22, f"prediction {out_h}×{out_w}", size=12))
    parts.append(
        _svg_text(
            margin + col_w,
            bottom_y + bottom_h + 50,
            "Top: the backbone shrinks the image (1/4 … 1/32). Bottom: RefineNet blocks refine "
            "from the deepest (right) to the finest (left).",
            size=11,
            anchor="start",
            fill="#52606d",
        )
    )
    parts.append("</svg>")
    return "\n".join(parts)
