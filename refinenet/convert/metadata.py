"""Dataset metadata a converted model carries in its config.json (names, palette, licence)."""

from __future__ import annotations

from typing import Any

from ..data import VOC_CLASSES as VOC_CLASS_NAMES
from ..visualize import pascal_voc_palette

# PASCAL VOC class order (index 0 is background), the order every VOC-21 checkpoint uses.
VOC_CLASSES = list(VOC_CLASS_NAMES)

AUTHORS_LICENSE = "other"
AUTHORS_LICENSE_NAME = "non-commercial-research"
AUTHORS_LICENSE_TEXT = (
    "The original authors released their RefineNet / Light-Weight RefineNet code and weights for "
    "non-commercial (academic) use only; commercial use needs the authors' permission. The converted "
    "weights are a format change of that work and keep its terms."
)


def dataset_metadata(
    num_classes: int, class_names: list[str] | None = None, dataset: str | None = None
) -> dict[str, Any]:
    """Class names, palette and dataset for a converted model.

    A 21-class head is the PASCAL VOC layout of every published PyTorch checkpoint; other class
    counts get names only when given, and the VOC colour map in any case (distinct colours for
    any number of classes).
    """
    if class_names is None and num_classes == len(VOC_CLASSES):
        class_names = list(VOC_CLASSES)
        dataset = dataset or "PASCAL VOC 2012"
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for a {num_classes}-class classifier")
    return {
        "class_names": class_names,
        "palette": pascal_voc_palette(num_classes).tolist(),
        "datasets": [dataset] if dataset else [],
    }


__all__ = ["AUTHORS_LICENSE", "AUTHORS_LICENSE_NAME", "AUTHORS_LICENSE_TEXT", "VOC_CLASSES", "dataset_metadata"]
