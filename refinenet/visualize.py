"""Turning model outputs into pictures: palettes, label-map colouring and overlays.

Everything here works on numpy arrays with lookup tables (no matplotlib figure per map), so the
app can re-render views quickly from cached activations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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


def overlay(image: Image.Image | np.ndarray, label_map: np.ndarray, palette: np.ndarray,
            alpha: float = 0.5) -> np.ndarray:
    """Blend the coloured label map over the RGB image; ``alpha`` is the label opacity (0..1)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    colours = colorize(label_map, palette).astype(np.float32)
    if rgb.shape[:2] != colours.shape[:2]:
        raise ValueError(f"image {rgb.shape[:2]} and label map {colours.shape[:2]} differ in size")
    alpha = float(np.clip(alpha, 0.0, 1.0))
    return np.clip(rgb * (1 - alpha) + colours * alpha + 0.5, 0, 255).astype(np.uint8)
