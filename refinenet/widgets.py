"""The demo's HTML widgets, each with its HTML, CSS and JavaScript in one place.

- The **picture grid** (:func:`picture_grid`, :data:`PICTURE_GRID_CSS`): pictures with captions,
  used for the block outputs and the chained residual pooling.
- The **legend** (:func:`legend`, :data:`LEGEND_CSS`, :data:`LEGEND_JS`): the photo over a table
  of the model's classes; hovering a row shows that class's mask over the photo.
- The **share table** (:func:`share_table`): colour swatches with a label and a bar for a share
  of the pixels, the key of a picture painted with a few colours (the variants' disagreement).

Pictures travel inside the HTML as data URIs: one HTML value spares the server a file write and
Gradio's per-file bookkeeping for every picture. Nothing here imports Gradio or torch; the app
hands the CSS and JavaScript to its components, :mod:`refinenet.demo` fills in the HTML.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape

import numpy as np
from PIL import Image

from .visualize import class_mask_image


def data_uri(image: Image.Image, format: str, **options) -> str:
    """``image`` encoded as ``format`` (``"PNG"`` or ``"JPEG"``, Pillow's save options) in a data URI."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    mime = "jpeg" if format == "JPEG" else format.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def hex_colour(rgb: Sequence[int]) -> str:
    """``(r, g, b)`` as ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


# ---------------------------------------------------------------------------------------------
# Picture grid


PICTURE_GRID_CSS = """
.picture-grid { display: grid; gap: 8px; }
.picture-grid figure { margin: 0; }
.picture-grid img { display: block; width: 100%; height: auto; border-radius: 4px; }
/* Feature maps come with one pixel per cell: enlarge them as flat squares, never smoothed. */
.picture-grid img.map { image-rendering: pixelated; }
.picture-grid figcaption { font-size: 12px; line-height: 1.3; margin-top: 3px; opacity: 0.85; }
"""


def picture_grid(pictures: list[tuple[np.ndarray, str]], columns: int, photos: frozenset[int] = frozenset()) -> str:
    """HTML: the pictures in a grid of ``columns``, each with its caption below (and as its alt
    text), carried inside the HTML as data URIs.

    Feature maps (one pixel per cell) go as lossless PNGs, marked ``class="map"`` so that
    :data:`PICTURE_GRID_CSS` enlarges them without smoothing; the pictures at ``photos``
    (indices) are photographs and go as JPEGs.
    """
    cells = []
    for index, (picture, caption) in enumerate(pictures):
        photo = index in photos
        uri = (
            data_uri(Image.fromarray(picture), "JPEG", quality=88, subsampling=0)
            if photo
            else data_uri(Image.fromarray(picture), "PNG", compress_level=1)
        )
        text = escape(caption)
        cells.append(
            f'<figure><img class="{"photo" if photo else "map"}" alt="{text}" src="{uri}">'
            f"<figcaption>{text}</figcaption></figure>"
        )
    return (
        f'<div class="picture-grid" style="grid-template-columns:repeat({max(1, columns)},minmax(0,1fr))">'
        + "".join(cells)
        + "</div>"
    )


# ---------------------------------------------------------------------------------------------
# Legend


LEGEND_CSS = """
.class-stack img { display: block; width: 100%; height: auto; }
.class-stack img.mask { position: absolute; left: 0; top: 0; opacity: 0; transition: opacity 0.12s; }
.class-stack img.mask.shown { opacity: 0.85; }
.class-stack.hovering img.photo { filter: grayscale(0.8) brightness(0.7); }
tr[data-class] { cursor: default; }
"""

# Hovering a row shows that class's mask over a dimmed photo. One listener on the component's
# root element (``element``), so it keeps working when a new segmentation replaces the HTML inside.
LEGEND_JS = """
const show = (row) => {
  const cls = row ? row.dataset.class : null;
  let found = false;
  element.querySelectorAll('img.mask').forEach((mask) => {
    const on = mask.dataset.class === cls;
    mask.classList.toggle('shown', on);
    found = found || on;
  });
  element.querySelectorAll('.class-stack').forEach((stack) => stack.classList.toggle('hovering', found));
};
element.addEventListener('mouseover', (event) => show(event.target.closest('tr[data-class]')));
element.addEventListener('mouseleave', () => show(null));
"""


def legend(
    photo: np.ndarray,
    masks: list[tuple[np.ndarray, int]],
    class_names: Sequence[str],
    palette: np.ndarray,
    shares: np.ndarray,
) -> str:
    """HTML: ``photo`` with one hidden mask per ``(mask, class index)``, over a table of every
    class in ``class_names`` (largest share first) with its colour and a bar for its share.

    Rows and masks carry the class index (``data-class``), which :data:`LEGEND_JS` uses to show
    a class's mask while its row is hovered. The photo goes as a JPEG, each mask as a two-colour
    palette PNG of a few kilobytes (:func:`~refinenet.visualize.class_mask_image`), the cheapest
    way found to send see-through coloured masks.
    """
    layers = [f'<img class="photo" alt="your photo" src="{data_uri(Image.fromarray(photo), "JPEG", quality=88)}">']
    for mask, c in masks:
        picture = class_mask_image(mask, palette[c])
        layers.append(
            f'<img class="mask" data-class="{c}" alt="pixels labelled {escape(class_names[c])}" '
            f'src="{data_uri(picture, "PNG", compress_level=1)}">'
        )
    rows = []
    for i in sorted(range(len(class_names)), key=lambda i: (-shares[i], i)):
        name = class_names[i]
        colour = hex_colour(palette[i])
        share = float(shares[i])
        weight = "600" if share > 0 else "400"
        opacity = "1" if share > 0 else "0.55"
        rows.append(
            f'<tr data-class="{i}" style="opacity:{opacity}"><td style="padding:2px 6px;white-space:nowrap">'
            f'<span style="display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:middle;'
            f'background:{colour};border:1px solid #0003"></span> '
            f'<span style="font-weight:{weight}">{escape(name)}</span></td>'
            f'<td style="padding:2px 6px;width:100%"><div style="background:{colour};height:12px;'
            f'width:{100 * share:.2f}%;min-width:{1 if share > 0 else 0}px;border-radius:2px"></div></td>'
            f'<td style="padding:2px 6px;text-align:right;font-variant-numeric:tabular-nums">{100 * share:.1f}%</td>'
            "</tr>"
        )
    return (
        '<div class="refinenet-legend">'
        f'<div class="class-stack" style="position:relative">{"".join(layers)}</div>'
        '<table style="width:100%;border-collapse:collapse;font-size:13px">'
        '<thead><tr><th style="text-align:left;padding:2px 6px">class</th>'
        '<th style="text-align:left;padding:2px 6px">share of pixels</th><th></th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _swatch(colour: str) -> str:
    return (
        '<span style="display:inline-block;width:14px;height:14px;border-radius:3px;vertical-align:middle;'
        f'background:{colour};border:1px solid #0003"></span>'
    )


def share_table(rows: Sequence[tuple[Sequence[int], str, float]], header: str = "") -> str:
    """HTML: one row per ``(colour, label, share)``: the colour's swatch, the label, a bar as long
    as the share (0..1) and the share in percent, under ``header`` (HTML, may be empty).

    The key of a picture painted with a few colours, in the legend's style: a reader matches
    a colour in the picture to its row and sees at once how much of the picture it covers.
    """
    lines = []
    for colour, label, share in rows:
        hex_value = hex_colour(colour)
        lines.append(
            f'<tr><td style="padding:2px 6px;white-space:nowrap">{_swatch(hex_value)} {escape(label)}</td>'
            f'<td style="padding:2px 6px;width:100%"><div style="background:{hex_value};height:12px;'
            f"width:{100 * share:.2f}%;min-width:{1 if share > 0 else 0}px;border-radius:2px;"
            f'{"border:1px solid #0002" if share > 0 else ""}"></div></td>'
            f'<td style="padding:2px 6px;text-align:right;font-variant-numeric:tabular-nums">{100 * share:.1f}%</td>'
            "</tr>"
        )
    return (
        f'<div class="share-table">{header}'
        f'<table style="width:100%;border-collapse:collapse;font-size:13px"><tbody>{"".join(lines)}</tbody></table>'
        "</div>"
    )


__all__ = [
    "LEGEND_CSS",
    "LEGEND_JS",
    "PICTURE_GRID_CSS",
    "data_uri",
    "hex_colour",
    "legend",
    "picture_grid",
    "share_table",
]
