"""Draw the demo's example pictures: synthetic street scenes, made entirely by this script.

No street photograph with a licence to redistribute was available to the project (CamVid frames
carry none), so the examples are drawn: sky, buildings with windows, a road in perspective with
lane markings, pavement, trees, poles, signs, cars and pedestrians, with a little texture and
blur so that they are not flat colour. They are the project's own work, under its licence.

They show how the demo works; a model trained on real street photos will segment them only
roughly. Run ``python assets/make_examples.py`` to regenerate them (deterministic).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 640, 480


def _sky(draw: ImageDraw.ImageDraw, top: tuple[int, int, int], bottom: tuple[int, int, int], horizon: int) -> None:
    for y in range(horizon):
        t = y / max(1, horizon - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line([(0, y), (WIDTH, y)], fill=colour)


def _building(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    x0: int,
    x1: int,
    top: int,
    base: int,
    colour: tuple[int, int, int],
    lit: float,
) -> None:
    draw.rectangle([x0, top, x1, base], fill=colour)
    window_w, window_h = 10 + int(rng.integers(0, 6)), 14 + int(rng.integers(0, 6))
    for wy in range(top + 12, base - 30, window_h + 12):
        for wx in range(x0 + 8, x1 - window_w - 4, window_w + 10):
            on = rng.random() < lit
            fill = (250, 220, 140) if on else tuple(max(0, c - 45) for c in colour)
            draw.rectangle([wx, wy, wx + window_w, wy + window_h], fill=fill)


def _car(draw: ImageDraw.ImageDraw, x: int, y: int, scale: float, colour: tuple[int, int, int]) -> None:
    w, h = 120 * scale, 42 * scale
    draw.rounded_rectangle([x, y - h, x + w, y], radius=int(10 * scale), fill=colour)
    draw.rounded_rectangle(
        [x + 0.2 * w, y - h - 0.55 * h, x + 0.78 * w, y - h + 4],
        radius=int(8 * scale),
        fill=tuple(max(0, c - 30) for c in colour),
    )
    draw.rectangle([x + 0.27 * w, y - h - 0.45 * h, x + 0.48 * w, y - h], fill=(150, 180, 200))
    draw.rectangle([x + 0.52 * w, y - h - 0.45 * h, x + 0.72 * w, y - h], fill=(150, 180, 200))
    for wx in (x + 0.2 * w, x + 0.8 * w):
        r = 13 * scale
        draw.ellipse([wx - r, y - r, wx + r, y + r], fill=(25, 25, 25))
        draw.ellipse([wx - r / 2, y - r / 2, wx + r / 2, y + r / 2], fill=(120, 120, 120))


def _tree(draw: ImageDraw.ImageDraw, rng: np.random.Generator, x: int, ground: int, size: float) -> None:
    draw.rectangle([x - 4 * size, ground - 60 * size, x + 4 * size, ground], fill=(90, 60, 35))
    for _ in range(7):
        dx, dy = rng.normal(0, 14 * size), rng.normal(-75 * size, 12 * size)
        r = (22 + rng.random() * 12) * size
        green = (40 + int(rng.integers(0, 30)), 110 + int(rng.integers(0, 40)), 40 + int(rng.integers(0, 25)))
        draw.ellipse([x + dx - r, ground + dy - r, x + dx + r, ground + dy + r], fill=green)


def _person(draw: ImageDraw.ImageDraw, x: int, ground: int, size: float, colour: tuple[int, int, int]) -> None:
    draw.ellipse([x - 6 * size, ground - 70 * size, x + 6 * size, ground - 58 * size], fill=(220, 180, 150))
    draw.rounded_rectangle([x - 9 * size, ground - 57 * size, x + 9 * size, ground - 28 * size], radius=4, fill=colour)
    draw.rectangle([x - 8 * size, ground - 28 * size, x - 2 * size, ground], fill=(40, 40, 70))
    draw.rectangle([x + 2 * size, ground - 28 * size, x + 8 * size, ground], fill=(40, 40, 70))


def street_scene(seed: int, dusk: bool = False) -> Image.Image:
    """One synthetic street scene (``WIDTH x HEIGHT`` RGB)."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    horizon = 250
    _sky(draw, (40, 60, 120) if dusk else (90, 150, 225), (230, 140, 90) if dusk else (200, 225, 245), horizon)
    x = -20
    while x < WIDTH:
        w = int(rng.integers(70, 150))
        top = int(rng.integers(60, 190))
        shade = rng.integers(90, 190)
        colour = (int(shade), int(shade * rng.uniform(0.8, 1.0)), int(shade * rng.uniform(0.7, 0.95)))
        _building(draw, rng, x, x + w, top, horizon + 30, colour, lit=0.6 if dusk else 0.1)
        x += w + int(rng.integers(0, 8))
    # Pavement on both sides, road in perspective between them.
    vanish = WIDTH * rng.uniform(0.42, 0.58)
    draw.polygon([(0, horizon + 30), (WIDTH, horizon + 30), (WIDTH, HEIGHT), (0, HEIGHT)], fill=(165, 160, 150))
    draw.polygon(
        [(vanish - 40, horizon + 30), (vanish + 40, horizon + 30), (WIDTH + 150, HEIGHT), (-150, HEIGHT)],
        fill=(75, 75, 80),
    )
    for i in range(8):
        t0, t1 = (i + 0.2) / 8, (i + 0.6) / 8
        y0, y1 = horizon + 30 + t0**1.6 * (HEIGHT - horizon - 30), horizon + 30 + t1**1.6 * (HEIGHT - horizon - 30)
        w0, w1 = 1 + 5 * t0**1.6, 1 + 5 * t1**1.6
        draw.polygon([(vanish - w0, y0), (vanish + w0, y0), (vanish + w1, y1), (vanish - w1, y1)], fill=(235, 235, 225))
    for side in (-1, 1):
        px = vanish + side * rng.uniform(170, 240)
        draw.rectangle([px - 3, 120, px + 3, horizon + 60], fill=(60, 60, 60))
        draw.rectangle([px - 14, 120, px + 14, 140], fill=(200, 40, 40) if side < 0 else (30, 90, 200))
    for tx in rng.uniform(10, WIDTH - 10, size=3):
        _tree(draw, rng, int(tx), horizon + 45, rng.uniform(0.8, 1.2))
    palette = [(180, 30, 30), (30, 60, 160), (220, 220, 220), (40, 40, 40), (200, 160, 30)]
    for i in range(int(rng.integers(2, 4))):
        scale = rng.uniform(0.8, 1.5)
        cx = int(rng.uniform(0.05, 0.7) * WIDTH)
        _car(draw, cx, int(horizon + 60 + 140 * (scale - 0.8)), scale, palette[(seed + i) % len(palette)])
    for _ in range(int(rng.integers(1, 4))):
        side = rng.choice([20, WIDTH - 60])
        _person(
            draw,
            int(side + rng.uniform(0, 40)),
            int(HEIGHT - rng.uniform(20, 90)),
            rng.uniform(0.9, 1.3),
            palette[int(rng.integers(0, len(palette)))],
        )
    # A little sensor-like texture and softness, so that edges are not perfectly crisp.
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)
    pixels += rng.normal(0, 4.0, size=pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


EXAMPLES = {
    "synthetic-street-day.jpg": dict(seed=7),
    "synthetic-street-dusk.jpg": dict(seed=11, dusk=True),
}


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, options in EXAMPLES.items():
        street_scene(**options).save(here / name, quality=90, optimize=True)
        print(here / name)


if __name__ == "__main__":
    main()
