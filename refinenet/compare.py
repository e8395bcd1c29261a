"""Variants of RefineNet on one photo: their predictions side by side, and where they disagree.

The paper's ablation (section 5.3) asks what each part of RefineNet is worth: a 4-cascade
against a 2- and a 1-cascade, chained residual pooling against none. Test mIoUs answer on
average; this module shows the answer on *one* photo. Every variant segments the same pixels
(:func:`compare` resizes the photo once, to the smallest input size among the variants, so no
variant sees a different picture), and the **disagreement map** counts, per pixel, how many
variants give a class other than the most common one there (:func:`disagreement`).

What is compared is chosen by whoever runs the app (``python app.py --compare A,B,C``, by
default the zoo's :data:`~refinenet.zoo.ABLATION_FAMILY`); each variant is captioned with what
it is (its cascade and CRP stages, read from its config) and its test mIoU
(:func:`measured_test_miou`). Variants that predict different class sets cannot be compared
(:func:`check_comparable`): a pixel's "road" and "person" would not be answers to one question.
Nothing here knows about user interfaces; the app shows what :func:`render_variants`,
:func:`render_disagreement` and :func:`disagreement_legend` draw.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import widgets, zoo
from .config import CASCADES, LEVEL_STRIDES, RefineNetConfig
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .inference import Segmenter, working_size
from .visualize import colorize, label_map_to_png

# The evaluation file scripts/release_model.py writes beside a model's weights (its "mIoU" is
# in percent): a local model folder's test mIoU, when the folder has one.
EVAL_FILE = "eval-test.json"
MAX_EVAL_BYTES = 1024 * 1024  # eval JSON files hold a per-class table: a few kilobytes

# The words the app and the docstrings use for the disagreement map (one definition).
DISAGREEMENT_DEFINITION = (
    "at each pixel, the number of variants whose class differs from the most common class among "
    "the variants there: 0 = all agree; the largest possible value, one less than the number of "
    "variants, means every variant says something different"
)

# Colours of the disagreement map: light grey where all agree, then yellow to dark red as more
# variants disagree (a sequential ramp, readable in print and by most colour-blind readers).
AGREE_COLOUR = (225, 225, 225)
RAMP_START = (254, 217, 118)
RAMP_END = (189, 0, 38)


@dataclass(frozen=True)
class Variant:
    """One compared model: the name it is loaded by, and what its caption says.

    ``name``: the zoo id, Hub repo id or folder the app loads it by (its model-cache key);
    ``title``: the zoo id, or the folder's own name (a full path is too long for a caption);
    ``description``: the architecture, from its config (:func:`describe`);
    ``test_miou``: in percent, ``None`` when not measured.
    """

    name: str
    title: str
    description: str
    test_miou: float | None

    @property
    def caption(self) -> str:
        miou = "test mIoU not measured" if self.test_miou is None else f"test mIoU {self.test_miou:.2f}"
        return f"{self.title} · {self.description} · {miou}"


def describe(config: RefineNetConfig) -> str:
    """What a variant is, in the paper's words: its cascade, the backbone levels each block
    fuses, and its CRP stages, e.g. ``2-cascade: RefineNet-2 (1/32+1/16) → RefineNet-1
    (1/8+1/4) · 4 CRP stages``. Read from the config, so a caption cannot contradict the model.
    """
    named = next((name for name, levels in CASCADES.items() if [list(b) for b in levels] == config.cascade), None)
    blocks = " → ".join(
        f"{name} ({'+'.join(f'1/{LEVEL_STRIDES[level]}' for level in levels)})"
        for name, levels in zip(config.block_names, config.cascade, strict=True)
    )
    stages = config.crp_stages
    crp = "no CRP (0 stages)" if stages == 0 else f"{stages} CRP stage{'' if stages == 1 else 's'}"
    light = "Light-Weight RefineNet, " if config.architecture == "lw-refinenet" else ""
    dilated = " · output stride 16 (1/32 level dilated)" if config.output_stride == 16 else ""
    return f"{light}{named or f'{len(config.cascade)}-block cascade'}: {blocks} · {crp}{dilated}"


def measured_test_miou(name: str, folder: str | Path | None = None) -> float | None:
    """The test mIoU (percent) of a variant: a zoo id's ``metrics["test_mean_iou"]``; for a model
    folder, the ``mIoU`` of the ``eval-test.json`` beside its weights; ``None`` when neither
    exists (the caption then says "not measured": a number from elsewhere, e.g. a validation
    split, would not be comparable with the others).

    A folder's file that holds no such number raises ``ValueError``: the operator asked for this
    folder, and silently calling it unmeasured would hide a broken file.
    """
    entry = zoo.MODELS.get(name)
    if entry is not None:
        value = entry.metrics.get("test_mean_iou")
        return None if value is None else float(value)
    if folder is None:
        return None
    path = Path(folder) / EVAL_FILE
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_EVAL_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size:,} bytes; an evaluation file holds a few kilobytes")
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("mIoU")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{path} is not an evaluation file ({error})") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{path} has no number under 'mIoU'")
    return float(value)


def variant(name: str, config: RefineNetConfig) -> Variant:
    """The :class:`Variant` of a loaded model called ``name`` (a zoo id, Hub repo id or folder).

    A name that is a zoo id is the zoo's model even if a folder of that name exists (as when the
    model loads); any other name that is a folder is read as one.
    """
    folder = Path(name) if name not in zoo.MODELS and Path(name).is_dir() else None
    title = folder.resolve().name if folder is not None else name
    return Variant(name, title, describe(config), measured_test_miou(name, folder))


def check_comparable(variants: Sequence[Variant], segmenters: Sequence[Segmenter]) -> None:
    """Refuse (``ValueError``, naming the odd one out) fewer than two variants, or variants that
    do not predict the same classes, in the same order: their label maps would not mean the same."""
    if len(variants) != len(segmenters):
        raise ValueError("one segmenter per variant is needed")
    if len(variants) < 2:
        raise ValueError(f"comparing needs at least two models, got {len(variants)}")
    reference = segmenters[0].class_names
    for item, segmenter in zip(variants[1:], segmenters[1:], strict=True):
        names = segmenter.class_names
        if names != reference:
            raise ValueError(
                f"{item.title} predicts {len(names)} classes ({_shown(names)}), {variants[0].title} "
                f"{len(reference)} ({_shown(reference)}); variants can be compared only when they predict "
                "the same classes in the same order"
            )


def _shown(classes: list[str]) -> str:
    return ", ".join(classes[:6]) + (", …" if len(classes) > 6 else "")


def common_size(height: int, width: int, max_sides: Sequence[int]) -> tuple[int, int]:
    """The ``(h, w)`` every variant sees: the photo scaled to the smallest input-size cap among
    the variants (``0``: no cap). No variant then rescales it again, so all see the same pixels."""
    caps = [int(side) for side in max_sides if side]
    return working_size(height, width, min(caps) if caps else None)


def disagreement(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """Per pixel, the number of variants whose class differs from the most common class there.

    With ``n`` label maps: 0 where all agree, up to ``n - 1`` where every variant says something
    different. Ties do not matter: with 2 variants saying "road" and 2 saying "car", either is
    the most common class and the count is 2 either way. Returns ``H x W`` uint8.
    """
    if not label_maps:
        raise ValueError("no label maps to compare")
    shapes = {np.shape(m) for m in label_maps}
    if len(shapes) != 1:
        raise ValueError(f"the label maps must have one size, got {sorted(shapes)}")
    stack = np.stack([np.asarray(m) for m in label_maps])
    # For each variant, how many variants (itself included) share its class at each pixel; the
    # largest such count is the size of the majority.
    majority = np.zeros(stack.shape[1:], dtype=np.int32)
    for labels in stack:
        np.maximum(majority, (stack == labels).sum(axis=0), out=majority)
    return (len(label_maps) - majority).astype(np.uint8)


def disagreement_palette(count: int) -> np.ndarray:
    """``256 x 3`` colours for a disagreement map of ``count`` variants: :data:`AGREE_COLOUR`
    for 0, then :data:`RAMP_START` (1 variant disagrees) to :data:`RAMP_END` (``count - 1``)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[0] = AGREE_COLOUR
    levels = max(1, count - 1)
    for level in range(1, levels + 1):
        t = 0.0 if levels == 1 else (level - 1) / (levels - 1)
        palette[level] = np.round(np.add(np.multiply(RAMP_START, 1 - t), np.multiply(RAMP_END, t)))
    return palette


@dataclass
class Comparison:
    """Every variant's answer for one photo, at the one size they all saw."""

    variants: list[Variant]
    label_maps: list[np.ndarray]  # H x W uint8 class indices, one per variant, in variant order
    class_names: list[str]
    palette: np.ndarray  # the first variant's colours, used for every variant's picture
    original_size: tuple[int, int]  # (h, w) of the photo
    size: tuple[int, int]  # (h, w) every variant saw
    disagreement_map: np.ndarray  # H x W uint8: :func:`disagreement` of the label maps
    seconds: dict[str, float] = field(default_factory=dict)  # network time per variant name

    def level_shares(self) -> np.ndarray:
        """Share of the pixels at each disagreement level 0 .. n-1 (sums to 1)."""
        counts = np.bincount(self.disagreement_map.ravel(), minlength=len(self.variants))
        return counts[: len(self.variants)] / max(1, self.disagreement_map.size)

    @property
    def agreement(self) -> float:
        """Share of the pixels where every variant gives the same class."""
        return float(self.level_shares()[0])


def compare(
    variants: Sequence[Variant],
    segmenters: Sequence[Segmenter],
    source: ImageSource,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Comparison:
    """Segment ``source`` with every variant, all at one size (:func:`common_size`).

    The photo is decoded once (``max_pixels`` bounds it, as for a segmentation) and resized
    once; each variant's label map then has that size, pixel for pixel comparable.
    """
    check_comparable(variants, segmenters)
    rgb = load_image(source, max_pixels)
    height, width = common_size(rgb.height, rgb.width, [s.max_side for s in segmenters])
    image = rgb if rgb.size == (width, height) else rgb.resize((width, height), Image.Resampling.BILINEAR)
    label_maps, seconds = [], {}
    for item, segmenter in zip(variants, segmenters, strict=True):
        tick = time.perf_counter()
        label_maps.append(segmenter.predict(image).label_map)
        seconds[item.name] = time.perf_counter() - tick
    return Comparison(
        variants=list(variants),
        label_maps=label_maps,
        class_names=segmenters[0].class_names,
        palette=segmenters[0].palette,
        original_size=(rgb.height, rgb.width),
        size=(height, width),
        disagreement_map=disagreement(label_maps),
        seconds=seconds,
    )


def render_variants(comparison: Comparison, columns: int = 4) -> str:
    """HTML: each variant's label map in the class colours, captioned, side by side (a
    :func:`~refinenet.widgets.picture_grid` of lossless PNGs: a reader, or a program, can tell
    every pixel's class from its colour)."""
    pictures = [
        (colorize(labels, comparison.palette), item.caption)
        for item, labels in zip(comparison.variants, comparison.label_maps, strict=True)
    ]
    return widgets.picture_grid(pictures, min(columns, len(pictures)))


def render_disagreement(comparison: Comparison) -> Image.Image:
    """The disagreement map as a palette image whose pixel values *are* the counts (0 .. n-1),
    coloured by :func:`disagreement_palette`: saved as PNG, picture and data at once."""
    return label_map_to_png(comparison.disagreement_map, disagreement_palette(len(comparison.variants)))


def disagreement_legend(comparison: Comparison) -> str:
    """HTML: the share of pixels where all variants agree, and the key of the disagreement map
    (one row per level with its colour and its share of the pixels)."""
    n = len(comparison.variants)
    palette = disagreement_palette(n)
    shares = comparison.level_shares()
    rows = [(palette[0], f"all {n} agree", float(shares[0]))]
    for level in range(1, n):
        verb = "differs" if level == 1 else "differ"
        rows.append((palette[level], f"{level} of {n} {verb} from the most common class", float(shares[level])))
    h, w = comparison.size
    header = (
        f"<p>All {n} variants agree on <b>{100 * comparison.agreement:.1f}%</b> of the pixels "
        f"(each saw the photo at {w}×{h} px).</p>"
    )
    return widgets.share_table(rows, header)


__all__ = [
    "DISAGREEMENT_DEFINITION",
    "EVAL_FILE",
    "Comparison",
    "Variant",
    "check_comparable",
    "common_size",
    "compare",
    "describe",
    "disagreement",
    "disagreement_legend",
    "disagreement_palette",
    "measured_test_miou",
    "render_disagreement",
    "render_variants",
    "variant",
]
