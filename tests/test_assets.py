"""The example images may be redistributed: each one shipped is recorded with its source and
licence in assets/README.md, and every example the app offers exists."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from refinenet.examples import EXAMPLE_SETS

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"


def readme_rows() -> dict[str, str]:
    rows = {}
    for line in (ASSETS / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            name = line.split("`")[1]
            rows[name] = line
    return rows


def test_every_shipped_image_has_a_source_and_licence():
    rows = readme_rows()
    images = sorted(p.name for p in ASSETS.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    assert images, "no example images found"
    for name in images:
        assert name in rows, f"{name} is not listed in assets/README.md"
        cells = [c.strip() for c in rows[name].strip("|").split("|")]
        assert len(cells) == 4 and all(cells), f"{name}: what, source and licence must all be filled in"
        licence = cells[3].lower()
        assert any(word in licence for word in ("public domain", "cc0", "mit", "cc by")), licence


def test_every_example_the_app_offers_is_a_readable_rgb_photo():
    sets = EXAMPLE_SETS
    assert sets
    for label, names in sets:
        assert names, label
        for name in names:
            with Image.open(ASSETS / name) as image:
                image.load()
                assert image.mode == "RGB" and min(image.size) >= 256, name
