"""The teaching demo's panels: one network run cached, every view rendered from that cache.

``app.py`` shows; this module computes. :func:`segment` runs a :class:`~refinenet.inference.Segmenter`
once per image, with ``return_features=True``, and keeps what the views need in a
:class:`DemoResult` (activations in float16 numpy arrays, images at display size). Every
``render_*`` function turns a cached result plus view options (opacity, reduction, scaling,
colour map, block) into pictures, captions and HTML without touching the network again. Only
path ablation runs the network a second time, because switching a path off *is* a different
network; its answers are cached per path as well.
"""

from __future__ import annotations

import base64
import ctypes
import io
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .config import LEVEL_STRIDES
from .inference import ImageSource, Segmenter
from .visualize import (
    DiagramBlock,
    DiagramLevel,
    apply_colormap,
    architecture_svg,
    change_mask,
    class_mask_image,
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
    block_layout: dict[str, dict[str, int]]
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


def segment(segmenter: Segmenter, source: ImageSource, *, model_id: str, out_dir: str | Path,
            display_max_side: int = DISPLAY_MAX_SIDE) -> DemoResult:
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
    model = segmenter.model
    blocks = []
    for block in features.blocks:
        levels = _block_levels(model, block.name)
        blocks.append(CachedBlock(
            name=block.name, stride=block.stride, levels=levels, output=_np(block.output),
            crp_input=_np(block.crp.input), crp_branches=tuple(_np(t) for t in block.crp.branches),
            crp_sums=tuple(_np(t) for t in block.crp.sums),
            crp_input_positive=block.crp.positive_share(),
        ))
    label_png = Path(out_dir) / f"labels-{uuid.uuid4().hex[:12]}.png"
    label_map_to_png(result.label_map, palette).save(label_png, format="PNG", compress_level=3)
    work_image = _resize_rgb(result.image, result.input_size)
    demo = DemoResult(
        model_id=model_id,
        class_names=segmenter.class_names,
        palette=palette,
        original_size=(height, width),
        input_size=tuple(result.input_size),
        display_image=np.asarray(_resize_rgb(result.image, display)),
        display_labels=resize_nearest(result.label_map, display),
        display_confidence=np.asarray(
            Image.fromarray(result.confidence, mode="F").resize(display[::-1], Image.Resampling.BILINEAR)
        ),
        shares=class_shares(result.label_map, config.num_classes),
        work_image=work_image,
        logits=features.logits[0].detach().to("cpu", torch.float32).numpy(),
        blocks=blocks,
        levels=_backbone_levels(model, result.input_size),
        block_layout={"adapt_rcus": config.adapt_rcus, "output_rcus": config.output_rcus,
                      "crp_stages": config.crp_stages, "kernel_size": config.kernel_size},
        backbone=config.backbone,
        label_png=label_png,
        seconds=dict(result.seconds),
    )
    demo.seconds["caching"] = time.perf_counter() - tick
    return demo


def _block_levels(model: torch.nn.Module, name: str) -> tuple[int, ...]:
    """Strides of the backbone levels a block fuses, finest first (from the model's cascade)."""
    names = list(model.block_names)
    levels = model.block_levels[names.index(name)]
    return tuple(LEVEL_STRIDES[lv] for lv in levels)


def _backbone_levels(model: torch.nn.Module, input_size: tuple[int, int]) -> list[DiagramLevel]:
    """Channels and sizes of the backbone levels for this input (every stride-2 step of the
    backbones rounds up, so a level at stride ``s`` is ``ceil`` halved ``log2(s)`` times)."""
    levels = []
    for stride in sorted(LEVEL_STRIDES.values()):
        channels = sum(model.backbone.channels_at(stride))
        h, w = input_size
        for _ in range(int(np.log2(stride))):
            h, w = (h + 1) // 2, (w + 1) // 2
        levels.append(DiagramLevel(stride, channels, (h, w)))
    return levels


def release_memory() -> None:
    """Hand freed heap memory back to the operating system (glibc only; a no-op elsewhere).

    One segmentation allocates and frees tens of megabytes (hundreds for a 108 MP photo) from
    several worker threads; glibc keeps such freed blocks in per-thread arenas, so a server's
    resident memory would ratchet up towards the worst request it ever served. ``malloc_trim``
    returns them.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


# ---------------------------------------------------------------------------------------------
# Models


class SegmenterCache:
    """Loaded models by name (zoo id, Hub repo id or folder), at most ``capacity`` at a time.

    Loading goes through ``loader`` (:func:`refinenet.hub.from_pretrained` by default: strict,
    sha256-checked, with download progress on tqdm). Each model runs at its own training input
    size (``config.input_size`` as the long-side cap) to keep the network time low; the least
    recently used model is dropped when a new one would exceed ``capacity``. Thread-safe: two
    sessions asking for the same model load it once.
    """

    def __init__(self, loader: Callable[[str], torch.nn.Module] | None = None, device: str | None = None,
                 capacity: int = 3) -> None:
        if loader is None:
            from .hub import from_pretrained as loader
        self.loader = loader
        self.device = device
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, Segmenter] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, name: str) -> Segmenter:
        name = str(name).strip()
        if not name:
            raise ValueError("no model given: choose a model, or type a Hub repo id or a local folder")
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per name; other models stay usable meanwhile
            with self._lock:
                if name in self._models:
                    return self._models[name]
            model = self.loader(name)
            segmenter = Segmenter(model, device=self.device, max_side=int(model.config.input_size))
            with self._lock:
                self._models[name] = segmenter
                self._loading.pop(name, None)
                while len(self._models) > self.capacity:
                    self._models.popitem(last=False)
            return segmenter

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)


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
    return {name: "#{:02x}{:02x}{:02x}".format(*result.palette[i]) for i, name in enumerate(result.class_names)}


def _data_uri(image: Image.Image, format: str, **options) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    mime = "jpeg" if format == "JPEG" else format.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def render_legend(result: DemoResult) -> str:
    """HTML: the photo with one hidden mask per class present, over a legend of the model's full
    palette with a bar for each class's pixel share.

    Rows and masks carry the class index (``data-class``), so the page can show a class's mask
    while its row is hovered (the app's script does). The pictures travel inside the HTML as data
    URIs: the photo as a JPEG, each mask as a two-colour palette PNG of a few kilobytes
    (:func:`~refinenet.visualize.class_mask_image`), cheaper to make than any other way of
    sending see-through coloured masks.
    """
    colours = colour_map_of(result)
    image, masks = render_annotations(result)
    layers = [f'<img class="photo" alt="your photo" src="{_data_uri(Image.fromarray(image), "JPEG", quality=88)}">']
    for mask, c in masks:
        picture = class_mask_image(mask, result.palette[c])
        layers.append(f'<img class="mask" data-class="{c}" alt="pixels labelled {escape(result.class_names[c])}" '
                      f'src="{_data_uri(picture, "PNG", compress_level=1)}">')
    rows = []
    for i in sorted(range(result.num_classes), key=lambda i: (-result.shares[i], i)):
        name = result.class_names[i]
        share = float(result.shares[i])
        weight = "600" if share > 0 else "400"
        opacity = "1" if share > 0 else "0.55"
        rows.append(
            f'<tr data-class="{i}" style="opacity:{opacity}"><td style="padding:2px 6px;white-space:nowrap">'
            f'<span style="display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:middle;'
            f'background:{colours[name]};border:1px solid #0003"></span> '
            f'<span style="font-weight:{weight}">{escape(name)}</span></td>'
            f'<td style="padding:2px 6px;width:100%"><div style="background:{colours[name]};height:12px;'
            f'width:{100 * share:.2f}%;min-width:{1 if share > 0 else 0}px;border-radius:2px"></div></td>'
            f'<td style="padding:2px 6px;text-align:right;font-variant-numeric:tabular-nums">{100 * share:.1f}%</td>'
            "</tr>"
        )
    return ('<div class="refinenet-legend">'
            f'<div class="class-stack" style="position:relative">{"".join(layers)}</div>'
            '<table style="width:100%;border-collapse:collapse;font-size:13px">'
            '<thead><tr><th style="text-align:left;padding:2px 6px">class</th>'
            '<th style="text-align:left;padding:2px 6px">share of pixels</th><th></th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def render_confidence(result: DemoResult, colormap: str = "magma") -> np.ndarray:
    """The largest class probability at every pixel, coloured (bright = sure, dark = unsure)."""
    return apply_colormap(result.display_confidence, colormap)


def timing_markdown(result: DemoResult, render_seconds: float | None = None) -> str:
    """One line of timings: network, pre/post-processing, and the rendering of the views."""
    s = result.seconds
    parts = [f"network **{1000 * s.get('network', 0):.0f} ms**",
             f"pre-processing {1000 * s.get('preprocess', 0):.0f} ms",
             f"post-processing {1000 * s.get('postprocess', 0):.0f} ms"]
    if render_seconds is not None:
        parts.append(f"rendering the views {1000 * render_seconds:.0f} ms")
    h, w = result.original_size
    ih, iw = result.input_size
    return (f"Image {w}×{h} px, network input {iw}×{ih} px · " + " · ".join(parts)
            + f" · model `{result.model_id}`")


# ---------------------------------------------------------------------------------------------
# Inside the network


def _shape_text(array: np.ndarray) -> str:
    return "×".join(str(int(d)) for d in array.shape)


def render_stages(result: DemoResult, reduction: str = "pca", scaling: str = "per-map",
                  colormap: str = "viridis", k: int = 4) -> list[tuple[np.ndarray, str]]:
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


def picture_grid(pictures: list[tuple[np.ndarray, str]], columns: int, photos: frozenset[int] = frozenset()) -> str:
    """HTML: the pictures in a grid of ``columns``, each with its caption below (and as its alt
    text), carried inside the HTML as data URIs.

    Feature maps (one pixel per cell) go as PNGs of a few hundred bytes, marked ``class="map"`` so
    the page enlarges them without smoothing; the pictures at ``photos`` (indices) are photographs
    and go as JPEGs. One HTML value instead of a gallery of files spares the server a file write
    and Gradio's per-file bookkeeping for each of the 14 pictures of a segmentation.
    """
    cells = []
    for index, (picture, caption) in enumerate(pictures):
        photo = index in photos
        uri = (_data_uri(Image.fromarray(picture), "JPEG", quality=88, subsampling=0) if photo
               else _data_uri(Image.fromarray(picture), "PNG", compress_level=1))
        text = escape(caption)
        cells.append(f'<figure><img class="{"photo" if photo else "map"}" alt="{text}" src="{uri}">'
                     f"<figcaption>{text}</figcaption></figure>")
    return (f'<div class="picture-grid" style="grid-template-columns:repeat({max(1, columns)},minmax(0,1fr))">'
            + "".join(cells) + "</div>")


def stages_grid(result: DemoResult, reduction: str = "pca", scaling: str = "per-map", colormap: str = "viridis",
                k: int = 4) -> str:
    """:func:`render_stages` as a :func:`picture_grid`: one column per block, or with top-k one
    row per block of ``k`` channels."""
    items = render_stages(result, reduction, scaling, colormap, k)
    return picture_grid(items, k if reduction == "topk" else len(result.blocks))


def context_cells(stages: int, pool_size: int = 5) -> list[int]:
    """Side of the window seen by each CRP stage, in cells: 5, 9, 13, 17 for 5x5 pools."""
    return [1 + (pool_size - 1) * (i + 1) for i in range(stages)]


def render_crp(result: DemoResult, block_name: str, reduction: str = "pca", scaling: str = "shared",
               colormap: str = "viridis") -> list[tuple[np.ndarray, str]]:
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
    window = f"windows {cells[0] * block.stride}…{cells[-1] * block.stride} px"
    context = (render_context(result, block.stride, cells), window)
    return [pictures[0], *pictures[1:1 + stages], context, *pictures[1 + stages:]]


def crp_grid(result: DemoResult, block_name: str, reduction: str = "pca", scaling: str = "shared",
             colormap: str = "viridis") -> str:
    """:func:`render_crp` as a :func:`picture_grid`: input and branches on the first row, the
    photo with the pooling windows (a JPEG) and the running sums on the second."""
    stages = len(result.block(block_name).crp_branches)
    items = render_crp(result, block_name, reduction, scaling, colormap)
    return picture_grid(items, stages + 1, photos=frozenset({stages + 1}))


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
    lines = [f"**{block.name}** works on a grid of {block.output.shape[1]}×{block.output.shape[2]} cells, "
             f"one cell = {block.stride}×{block.stride} pixels of the network input."]
    for i, c in enumerate(cells):
        px = c * block.stride
        extra = f" ≈ {px * scale:.0f} px of your photo" if abs(scale - 1) > 0.01 else ""
        lines.append(f"- stage {i + 1}: {c}×{c} cells = {px}×{px} px of the network input{extra}")
    lines.append(f"\nAfter the ReLU that opens CRP, {100 * block.crp_input_positive:.1f}% of the input values "
                 "are positive.")
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

    ``max(dim).indices`` is the argmax (first index on ties, as ``argmax``) at a third of the
    cost: on the CPU, ``argmax`` over the class dimension of a 21 x 360 x 480 map takes 13 ms.
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
    text = (f"Without the **1/{stride}** path, **{100 * changed.mean():.1f}%** of the pixels change class "
            f"(computed at the network input size, {before.shape[1]}×{before.shape[0]}).")
    if winners or losers:
        text += " Gained: " + (", ".join(winners) or "none") + ". Lost: " + (", ".join(losers) or "none") + "."
    return text


# ---------------------------------------------------------------------------------------------
# Architecture


def render_architecture(result: DemoResult, ablated_stride: int | None = None) -> str:
    """The cascade as an SVG (inside a div), with this run's tensor shapes."""
    layout = result.block_layout
    blocks = [DiagramBlock(b.name, b.stride, b.levels, tuple(int(d) for d in b.output.shape), **layout)
              for b in result.blocks]
    logits_size = tuple(int(d) for d in result.logits.shape[1:])
    svg = architecture_svg(result.input_size, result.backbone, result.levels, blocks, result.num_classes,
                           logits_size, output_size=result.original_size, ablated_stride=ablated_stride,
                           title=f"{result.model_id}: this run's tensor shapes (C×H×W)")
    return f'<div class="refinenet-architecture" style="overflow-x:auto">{svg}</div>'


__all__ = [
    "AblationView",
    "CachedBlock",
    "SegmenterCache",
    "DemoResult",
    "ablate",
    "ablated_labels",
    "ablation_view",
    "ablation_summary",
    "release_memory",
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
