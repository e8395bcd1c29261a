"""Tiny generated segmentation datasets for tests (no real data needed)."""

from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(images: Path, labels: Path, stems, size=(40, 30), num_classes=3, ignore=255, seed=0, suffix=".png"):
    """Images whose colour follows the label (so a model can learn them) plus label PNGs."""
    rng = np.random.default_rng(seed)
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    w, h = size
    for stem in stems:
        label = np.zeros((h, w), np.uint8)
        label[:, w // 2 :] = 1
        label[h // 2 :, :] = rng.integers(0, num_classes)
        label[0, 0] = ignore
        colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [120, 120, 120]], np.uint8)
        rgb = colours[label % 4] + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(images / f"{stem}{suffix}")
        Image.fromarray(label).save(labels / f"{stem}.png")
