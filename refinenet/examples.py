"""The example images the demo offers, grouped by the models they suit.

Names of files in the repository's ``assets/`` folder, where ``assets/README.md`` records the
source and licence of each. Kept apart from the app so that the list can be read (and checked
by the tests) without starting Gradio.
"""

from __future__ import annotations

EXAMPLE_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Everyday photos (public domain, CC0): for the PASCAL VOC model", ("astronaut.jpg", "chelsea-the-cat.jpg")),
    ("Synthetic street scenes: for the CamVid models", ("synthetic-street-day.jpg", "synthetic-street-dusk.jpg")),
)

__all__ = ["EXAMPLE_SETS"]
