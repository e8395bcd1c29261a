"""The teaching demo's panels: one network run cached, every view rendered from that cache.

``app.py`` shows; this module computes. :func:`segment` runs a :class:`~refinenet.inference.Segmenter`
once per image, with ``return_features=True``, and keeps what the views need in a
:class:`DemoResult` (activations in float16 numpy arrays, images at display size). Every
``render_*`` function turns a cached result plus view options (opacity, reduction, scaling,
colour map, block) into pictures, captions and HTML without touching the network again. Only
path ablation runs the network a second time, because switching a path off *is* a different
network; its answers are cached per path as well.

Everything about the network comes from what it returned (the
:class:`~refinenet.models.SegmentationOutput` in the Segmenter's result, which carries the
blocks' backbone levels and the backbone's shapes): this module never reads the model object.
HTML widgets are drawn by :mod:`refinenet.widgets`; :class:`SegmentOutputs` names what one
segmentation hands the app.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from . import widgets
from .config import LEVEL_STRIDES
from .images import ImageSource
from .inference import Segmenter
from .visualize import (
    DiagramBlock,
    DiagramLevel,
    apply_colormap,
    architecture_svg,
    change_mask,
    class_shares,
    fit_within,
    label_map_to_png,
    overlay,
    reduce_feature_maps,
    render_change_map,
    resize_nearest,
)

# Long side of the pictures sent to the browser. The label map download keeps the full size.
DISPLAY_MAX_SIDE = 960
# The legend carries the photo and one mask per class present inside its HTML: a smaller picture.
ANNOTATION_MAX_SIDE = 640
# Activations are cached in half precision: the pictures are 8-bit, and it halves the memory a
# session holds (about 70 MB for a 256-channel MobileNetV2 RefineNet at 480 x 360).
CACHE_DTYPE = torch.float16


@dataclass
class CachedBlock:
    """One RefineNet block's activations (``C x H x W`` float16) and its components."""

    name: str
    stride: int
    levels: tuple[int, ...]
    output: np.ndarray
    crp_input: np.ndarray
    crp_branches: tuple[np.ndarray, ...]
    crp_sums: tuple[np.ndarray, ...]
    crp_input_positive: float  # share of the CRP input's values above zero (0.0: a dead block)


@dataclass
class DemoResult:
    """Everything the views of one segmented image need, without the network."""

    model_id: str
    class_names: list[str]
    palette: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    display_image: np.ndarray
    display_labels: np.ndarray
    display_confidence: np.ndarray
    shares: np.ndarray
    work_image: Image.Image
    logits: np.ndarray
    blocks: list[CachedBlock]
    levels: list[DiagramLevel]
    block_layout: dict[str, int]
    backbone: str
    label_png: Path
    seconds: dict[str, float]
    ablations: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def block(self, name: str) -> CachedBlock:
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block named {name!r}; this model has {', '.join(b.name for b in self.blocks)}")


def _np(t: torch.Tensor) -> np.ndarray:
    """First item of a batch tensor as a ``C x H x W`` float16 array, converted by torch (whose
    vectorised half-precision cast is many times faster than numpy's) and left in the network's
    channels-last layout: a strided view, not a copy into C-major order. Only the maps a view
    shows are ever reordered, and PCA wants one row per pixel anyway."""
    return t[0].detach().to("cpu", CACHE_DTYPE).numpy()


def _all_zero(fmap: np.ndarray) -> bool:
    """Whether a cached (float16) map is zero everywhere; torch tests half precision natively,
    numpy would first widen every value (milliseconds for a 1/4 map)."""
    return not bool(torch.from_numpy(fmap).any())


def _resize_rgb(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BILINEAR)


def segment(
    segmenter: Segmenter,
    source: ImageSource,
    *,
    model_id: str,
    out_dir: str | Path,
    display_max_side: int = DISPLAY_MAX_SIDE,
) -> DemoResult:
    """Run the network once on ``source`` and cache what every view needs.

    The full-size label map is written at once to ``out_dir`` as a palette PNG (it is the one
    output that keeps the original resolution); everything else is kept at display size.
    """
    result = segmenter.predict(source, return_features=True)
    tick = time.perf_counter()
    config = segmenter.config
    palette = segmenter.palette
    height, width = result.label_map.shape
    display = fit_within((height, width), display_max_side)
    features = result.features
    assert features is not None  # asked for with return_features=True
    blocks = []
    for block, levels in zip(features.blocks, features.block_levels, strict=True):
        blocks.append(
            CachedBlock(
                name=block.name,
                stride=block.stride,
                levels=levels,
                output=_np(block.output),
                crp_input=_np(block.crp.input),
                crp_branches=tuple(_np(t) for t in block.crp.branches),
                crp_sums=tuple(_np(t) for t in block.crp.sums),
                crp_input_positive=block.crp.positive_share(),
            )
        )
    label_png = Path(out_dir) / f"labels-{uuid.uuid4().hex[:12]}.png"
    label_map_to_png(result.label_map, palette).save(label_png, format="PNG", compress_level=3)
    work_image = _resize_rgb(result.image, result.input_size)
    demo = DemoResult(
        model_id=model_id,
        class_names=segmenter.class_names,
        palette=palette,
        original_size=(height, width),
        input_size=result.input_size,
        display_image=np.asarray(_resize_rgb(result.image, display)),
        display_labels=resize_nearest(result.label_map, display),
        display_confidence=np.asarray(
            Image.fromarray(result.confidence, mode="F").resize(display[::-1], Image.Resampling.BILINEAR)
        ),
        shares=class_shares(result.label_map, config.num_classes),
        work_image=work_image,
        logits=features.logits[0].detach().to("cpu", torch.float32).numpy(),
        blocks=blocks,
        levels=[
            DiagramLevel(level.stride, level.channels, level.size, level.computed_stride) for level in features.backbone
        ],
        block_layout={
            "adapt_rcus": config.adapt_rcus,
            "output_rcus": config.output_rcus,
            "crp_stages": config.crp_stages,
            "kernel_size": config.kernel_size,
        },
        backbone=config.backbone,
        label_png=label_png,
        seconds=dict(result.seconds),
    )
    demo.seconds["caching"] = time.perf_counter() - tick
    return demo


# ---------------------------------------------------------------------------------------------
# Segmentation views


def render_overlay(result: DemoResult, opacity: float) -> np.ndarray:
    """The photo with the label colours blended in at ``opacity`` (0 = photo, 1 = labels)."""
    return overlay(result.display_image, result.display_labels, result.palette, alpha=opacity)


def render_annotations(result: DemoResult) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
    """``(image, [(mask, class index), ...])``: the photo (long side at most
    ``ANNOTATION_MAX_SIDE``) and one boolean mask per class present, largest share first."""
    size = fit_within(result.display_labels.shape, ANNOTATION_MAX_SIDE)
    labels = resize_nearest(result.display_labels, size)
    image = np.asarray(_resize_rgb(Image.fromarray(result.display_image), size))
    present = [int(c) for c in np.argsort(-result.shares) if result.shares[c] > 0]
    return image, [(labels == c, c) for c in present]


def colour_map_of(result: DemoResult) -> dict[str, str]:
    """Class name to ``#rrggbb`` for every class of the model (its full palette)."""
    return {name: widgets.hex_colour(result.palette[i]) for i, name in enumerate(result.class_names)}


def render_legend(result: DemoResult) -> str:
    """The legend widget (:func:`refinenet.widgets.legend`): the photo with one hidden mask per
    class present, over the model's full palette with a bar for each class's pixel share."""
    image, masks = render_annotations(result)
    return widgets.legend(image, masks, result.class_names, result.palette, result.shares)


def render_confidence(result: DemoResult, colormap: str = "magma") -> np.ndarray:
    """The largest class probability at every pixel, coloured (bright = sure, dark = unsure)."""
    return apply_colormap(result.display_confidence, colormap)


def timing_markdown(result: DemoResult, render_seconds: float | None = None) -> str:
    """One line of timings: network, pre/post-processing, and the rendering of the views."""
    s = result.seconds
    parts = [
        f"network **{1000 * s.get('network', 0):.0f} ms**",
        f"pre-processing {1000 * s.get('preprocess', 0):.0f} ms",
        f"post-processing {1000 * s.get('postprocess', 0):.0f} ms",
    ]
    if render_seconds is not None:
        parts.append(f"rendering the views {1000 * render_seconds:.0f} ms")
    h, w = result.original_size
    ih, iw = result.input_size
    return f"Image {w}×{h} px, network input {iw}×{ih} px · " + " · ".join(parts) + f" · model `{result.model_id}`"


# ---------------------------------------------------------------------------------------------
# Inside the network


def _shape_text(array: np.ndarray) -> str:
    return "×".join(str(int(d)) for d in array.shape)


def render_stages(
    result: DemoResult, reduction: str = "pca", scaling: str = "per-map", colormap: str = "viridis", k: int = 4
) -> list[tuple[np.ndarray, str]]:
    """The outputs of RefineNet-4 ... RefineNet-1 (deep to shallow) as pictures with captions
    naming the stride and the ``C×H×W`` shape.

    Each picture has one pixel per cell of its map (RefineNet-4 on a 480×360 input: 15×12):
    the app enlarges them in the browser without smoothing (CSS ``image-rendering: pixelated``),
    so a cell of a stride-32 map shows as a flat square, and the pictures cost next to nothing
    to encode and send.
    """
    maps = [b.output for b in result.blocks]
    if reduction == "topk":  # k pictures per block: short captions, the grid's rows are the blocks
        captions = [b.name for b in result.blocks]
    else:
        captions = [f"{b.name} · stride {b.stride} · {_shape_text(b.output)}" for b in result.blocks]
    reduced = reduce_feature_maps(maps, captions, reduction, scaling, colormap, k)
    return [(item.rgb, item.caption) for item in reduced]


def stages_grid(
    result: DemoResult, reduction: str = "pca", scaling: str = "per-map", colormap: str = "viridis", k: int = 4
) -> str:
    """:func:`render_stages` as a :func:`~refinenet.widgets.picture_grid`: one column per block,
    or with top-k one row per block of ``k`` channels."""
    items = render_stages(result, reduction, scaling, colormap, k)
    return widgets.picture_grid(items, k if reduction == "topk" else len(result.blocks))


def context_cells(stages: int, pool_size: int = 5) -> list[int]:
    """Side of the window seen by each CRP stage, in cells: 5, 9, 13, 17 for 5x5 pools."""
    return [1 + (pool_size - 1) * (i + 1) for i in range(stages)]


def render_crp(
    result: DemoResult, block_name: str, reduction: str = "pca", scaling: str = "shared", colormap: str = "viridis"
) -> list[tuple[np.ndarray, str]]:
    """Chained residual pooling of one block: the input, then each stage's branch and the
    running sum, and the image with the pooling windows drawn to scale.

    Order (five columns): input, branch 1..N, then the context picture, sum 1..N. With top-k the
    strongest channel of each map is shown (k = 1), so the grid keeps its shape.
    """
    block = result.block(block_name)
    stages = len(block.crp_branches)
    cells = context_cells(stages)
    maps = [block.crp_input, *block.crp_branches, *block.crp_sums]
    captions = [f"input {_shape_text(block.crp_input)}"]
    captions += [f"branch {i + 1} · {c}×{c} cells" for i, c in enumerate(cells)]
    captions += [f"sum after stage {i + 1}" for i in range(stages)]
    captions = [c + " · all zero" if _all_zero(m) else c for c, m in zip(captions, maps, strict=True)]
    # One feature space (the sums add the branches to the input): one PCA basis for all maps.
    reduced = reduce_feature_maps(maps, captions, reduction, scaling, colormap, k=1, shared_basis=True)
    pictures = [(item.rgb, item.caption) for item in reduced]  # one pixel per cell, as render_stages
    if not stages:  # a model trained without CRP (the ablation): its input is the block's output
        return pictures
    window = f"windows {cells[0] * block.stride}…{cells[-1] * block.stride} px"
    context = (render_context(result, block.stride, cells), window)
    return [pictures[0], *pictures[1 : 1 + stages], context, *pictures[1 + stages :]]


def crp_grid(
    result: DemoResult, block_name: str, reduction: str = "pca", scaling: str = "shared", colormap: str = "viridis"
) -> str:
    """:func:`render_crp` as a :func:`~refinenet.widgets.picture_grid`: input and branches on the
    first row, the photo with the pooling windows (a JPEG) and the running sums on the second."""
    stages = len(result.block(block_name).crp_branches)
    items = render_crp(result, block_name, reduction, scaling, colormap)
    return widgets.picture_grid(items, stages + 1, photos=frozenset({stages + 1}))


_CONTEXT_COLOURS = ((253, 231, 37), (94, 201, 98), (33, 145, 140), (59, 82, 139), (72, 24, 106))


def render_context(result: DemoResult, stride: int, cells: list[int]) -> np.ndarray:
    """The network input with the CRP windows of every stage drawn as squares around its centre
    (``cells x stride`` input pixels each), so the growth 5, 9, 13, 17 cells is visible."""
    image = result.work_image.copy()
    draw = ImageDraw.Draw(image)
    cx, cy = image.width / 2, image.height / 2
    for i, c in enumerate(cells):
        half = c * stride / 2
        colour = _CONTEXT_COLOURS[i % len(_CONTEXT_COLOURS)]
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], outline=colour, width=3)
    half = stride / 2
    draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=(255, 255, 255))
    return np.asarray(image)


def crp_context_markdown(result: DemoResult, block_name: str) -> str:
    """The pooling context of each CRP stage of a block, in cells and in pixels."""
    block = result.block(block_name)
    cells = context_cells(len(block.crp_branches))
    scale = result.original_size[0] / result.input_size[0]
    lines = [
        f"**{block.name}** works on a grid of {block.output.shape[1]}×{block.output.shape[2]} cells, "
        f"one cell = {block.stride}×{block.stride} pixels of the network input."
    ]
    if not cells:
        lines.append(
            f"- no CRP stages: this model was trained without chained residual pooling (the paper's ablation), "
            f"so {block.name}'s fused input passes the ReLU straight to its output RCUs, with no pooled context."
        )
    for i, c in enumerate(cells):
        px = c * block.stride
        extra = f" ≈ {px * scale:.0f} px of your photo" if abs(scale - 1) > 0.01 else ""
        lines.append(f"- stage {i + 1}: {c}×{c} cells = {px}×{px} px of the network input{extra}")
    lines.append(
        f"\nAfter the ReLU that opens CRP, {100 * block.crp_input_positive:.1f}% of the input values are positive."
    )
    for name, cut in dead_blocks(result):
        lines.append(
            f"\n**Dead block: {name}.** Its CRP input is zero at every cell for this image (every fused value "
            f"was negative before the ReLU), so {name} hands on an output that would be the same for any photo "
            f"in this state: what the {' and '.join(f'1/{s}' for s in cut)} paths see of *this* photo does not "
            "reach the prediction. (Switching a path off in the ablation is a bigger change: its features become "
            "zeros, which can also wake the block up.)"
        )
    return "\n".join(lines)


def dead_blocks(result: DemoResult) -> list[tuple[str, list[int]]]:
    """Blocks whose CRP input is zero everywhere, with the backbone strides cut off by them.

    CRP opens with a ReLU; when the fused input is negative everywhere, the block's output no
    longer depends on the image, so the paths into it and into every deeper block carry nothing
    to the prediction (a "dead" block, a failure mode of training worth seeing).
    """
    dead = []
    for index, block in enumerate(result.blocks):
        if block.crp_input_positive == 0.0:
            cut = sorted({s for deeper in result.blocks[: index + 1] for s in deeper.levels})
            dead.append((block.name, cut))
    return dead


# ---------------------------------------------------------------------------------------------
# Path ablation


def labels_from_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``K x h x w`` class scores to an ``H x W`` label map: bilinear upsampling, then argmax
    (the argmax of the softmax is that of the scores).

    ``max(dim).indices`` is the argmax (first index on ties, as ``argmax``) at about a third of
    the CPU cost of ``argmax`` over the class dimension.
    """
    scores = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
    up = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return up[0].max(dim=0).indices.to(torch.uint8).numpy()


@dataclass
class AblationView:
    overlay: np.ndarray
    changes: np.ndarray
    changed_fraction: float
    summary: str


def ablated_labels(segmenter: Segmenter, work_image: Image.Image, stride: int) -> np.ndarray:
    """Run the network on the cached network input with the backbone path at ``stride`` (4, 8,
    16 or 32) switched off; the label map at the network input size.

    The labels come from the class scores exactly as :func:`labels_from_logits` makes the full
    network's, so every changed pixel is due to the missing path.
    """
    if stride not in LEVEL_STRIDES.values():
        raise ValueError(f"the path to switch off must be at stride 4, 8, 16 or 32, not {stride}")
    # The features (not just the labels) are asked for to get the class scores at 1/4.
    ablated = segmenter.predict(work_image, return_features=True, ablate_stride=stride)
    assert ablated.features is not None  # asked for with return_features=True
    return labels_from_logits(ablated.features.logits[0].numpy(), (work_image.height, work_image.width))


def ablate(segmenter: Segmenter, result: DemoResult, stride: int, opacity: float = 0.5) -> AblationView:
    """Switch off the backbone path at ``stride`` and show the new prediction and where it
    differs from the full network. The network runs once per path; the answer is cached."""
    if stride not in result.ablations:
        result.ablations[stride] = ablated_labels(segmenter, result.work_image, stride)
    return ablation_view(result, stride, opacity)


def ablation_view(result: DemoResult, stride: int, opacity: float = 0.5) -> AblationView:
    """The pictures of an ablation already in ``result.ablations`` (no network run)."""
    before = labels_from_logits(result.logits, result.input_size)
    after = result.ablations[stride]
    changed = change_mask(before, after)
    image = np.asarray(result.work_image)
    return AblationView(
        overlay=overlay(image, after, result.palette, alpha=opacity),
        changes=render_change_map(image, before, after, result.palette),
        changed_fraction=float(changed.mean()) if changed.size else 0.0,
        summary=ablation_summary(result, before, after, stride),
    )


def ablation_summary(result: DemoResult, before: np.ndarray, after: np.ndarray, stride: int) -> str:
    """Markdown: share of pixels that changed, and the classes that gained or lost most."""
    changed = change_mask(before, after)
    gained = class_shares(after, result.num_classes) - class_shares(before, result.num_classes)
    order = np.argsort(gained)
    losers = [f"{result.class_names[i]} {100 * gained[i]:+.1f} pts" for i in order[:3] if gained[i] < -0.0005]
    winners = [f"{result.class_names[i]} {100 * gained[i]:+.1f} pts" for i in order[::-1][:3] if gained[i] > 0.0005]
    text = (
        f"Without the **1/{stride}** path, **{100 * changed.mean():.1f}%** of the pixels change class "
        f"(computed at the network input size, {before.shape[1]}×{before.shape[0]})."
    )
    if winners or losers:
        text += " Gained: " + (", ".join(winners) or "none") + ". Lost: " + (", ".join(losers) or "none") + "."
    return text


# ---------------------------------------------------------------------------------------------
# Architecture


def _chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    channels, height, width = (int(d) for d in shape)
    return channels, height, width


def render_architecture(result: DemoResult, ablated_stride: int | None = None) -> str:
    """The cascade as an SVG (inside a div), with this run's tensor shapes."""
    layout = result.block_layout
    blocks = [DiagramBlock(b.name, b.stride, b.levels, _chw(b.output.shape), **layout) for b in result.blocks]
    logits_size = (int(result.logits.shape[1]), int(result.logits.shape[2]))
    svg = architecture_svg(
        result.input_size,
        result.backbone,
        result.levels,
        blocks,
        result.num_classes,
        logits_size,
        output_size=result.original_size,
        ablated_stride=ablated_stride,
        title=f"{result.model_id}: this run's tensor shapes (C×H×W)",
    )
    return f'<div class="refinenet-architecture" style="overflow-x:auto">{svg}</div>'


# ---------------------------------------------------------------------------------------------
# What a segmentation hands the app


@dataclass
class SegmentOutputs:
    """The outputs of one segmentation, named once, in the order the app's event returns them.

    The app fills one with its components to declare the event's outputs, and one with values to
    answer a request; :meth:`values` gives either in field order, so the two cannot drift apart.
    API clients receive every field but ``state`` (a ``gr.State`` stays on the server), in the
    order of :meth:`client_names`.
    """

    state: Any  # the session's DemoResult: every view is redrawn from it
    overlay: Any  # the photo with the label colours blended in
    legend: Any  # HTML of the legend widget
    confidence: Any  # the largest class probability, coloured
    label_png: Any  # the full-size label map (palette PNG), for download
    stages: Any  # HTML: the block outputs, deep to shallow
    crp_block: Any  # the block whose chained residual pooling is shown
    crp: Any  # HTML: that block's CRP input, branches and sums
    crp_context: Any  # Markdown: the CRP pooling windows
    ablated: Any  # the prediction without a backbone path (none after a new segmentation)
    changes: Any  # where the ablation changed the prediction
    ablation_summary: Any  # Markdown on the ablation
    path: Any  # the switched-off backbone path ("none")
    architecture: Any  # HTML: the architecture diagram with this run's shapes
    timing: Any  # Markdown: where the time went

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every field, in the order of the event's outputs."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def client_names(cls) -> tuple[str, ...]:
        """The fields an API client receives, in its order (all but ``state``)."""
        return tuple(name for name in cls.names() if name != "state")

    @classmethod
    def from_client(cls, values: tuple | list) -> dict[str, Any]:
        """What an API client received, by name."""
        return dict(zip(cls.client_names(), values, strict=True))

    def values(self) -> tuple:
        """The fields' values, in the order of the event's outputs."""
        return tuple(getattr(self, name) for name in self.names())


__all__ = [
    "AblationView",
    "CachedBlock",
    "DemoResult",
    "SegmentOutputs",
    "ablate",
    "ablated_labels",
    "ablation_view",
    "ablation_summary",
    "colour_map_of",
    "context_cells",
    "crp_context_markdown",
    "dead_blocks",
    "labels_from_logits",
    "render_annotations",
    "render_architecture",
    "render_confidence",
    "render_context",
    "render_crp",
    "render_legend",
    "render_overlay",
    "render_stages",
    "segment",
    "timing_markdown",
]
