"""``RefineNetConfig``: everything needed to rebuild a model and use it, stored as config.json.

The architecture part (backbone, widths, cascade, CRP) decides the layer shapes; the metadata
part (class names, palette, normalisation, licence, training data) travels with the weights so
that a downloaded model is usable without knowing where it came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A RefineNet level is one backbone stride: level 1 is 1/4 of the input, level 4 is 1/32.
LEVEL_STRIDES = {1: 4, 2: 8, 3: 16, 4: 32}

# The cascades compared in the paper (section 5.3, Fig. 7): which backbone levels each block
# takes, deepest block first. RefineNet-1 is always the last block.
CASCADES: dict[str, tuple[tuple[int, ...], ...]] = {
    "4-cascade": ((4,), (3,), (2,), (1,)),
    "2-cascade": ((4, 3), (2, 1)),
    "1-cascade": ((4, 3, 2, 1),),
}

ARCHITECTURES = ("refinenet", "lw-refinenet")


def resolve_cascade(cascade: str | Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Turn a cascade name ("4-cascade", "2-cascade", "1-cascade") or explicit levels into levels."""
    if isinstance(cascade, str):
        if cascade not in CASCADES:
            raise ValueError(f"unknown cascade {cascade!r}; choose one of {', '.join(CASCADES)}")
        return CASCADES[cascade]
    levels = tuple(tuple(int(lv) for lv in block) for block in cascade)
    used = sorted(lv for block in levels for lv in block)
    if used != [1, 2, 3, 4]:
        raise ValueError(f"a cascade must use each backbone level 1..4 exactly once, got {levels}")
    return levels


@dataclass
class RefineNetConfig:
    """The content of a model folder's config.json.

    ``widths`` and ``cascade`` are listed deepest block first; ``cascade[i]`` names the backbone
    levels (1 = stride 4 ... 4 = stride 32) that block ``i`` fuses with the previous block's
    output. ``kernel_size`` is that of every decoder convolution (3 in RefineNet, 1 in
    Light-Weight RefineNet); the classifier is always 3x3.
    """

    architecture: str = "refinenet"
    backbone: str = "resnet101"
    num_classes: int = 21
    widths: list[int] = field(default_factory=lambda: [512, 256, 256, 256])
    cascade: list[list[int]] = field(default_factory=lambda: [[4], [3], [2], [1]])
    crp_stages: int = 4
    crp_order: str = "pool-conv"
    kernel_size: int = 3
    adapt_rcus: int = 2
    output_rcus: int = 3
    activation: str = "relu"
    fuse_backbone_conv: bool = True
    align_corners: bool = True
    dropout: float = 0.5
    # Metadata used by inference, the app and the model card.
    class_names: list[str] | None = None
    palette: list[list[int]] | None = None
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    ignore_index: int | None = None
    input_size: int = 512
    license: str | None = None
    datasets: list[str] = field(default_factory=list)
    description: str = ""
    # Where the backbone's weights started from before training (provenance and licence), e.g.
    # torchvision's ImageNet weights or a segmentation teacher's encoder.
    backbone_init: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.architecture!r}; expected one of {ARCHITECTURES}")
        self.cascade = [list(b) for b in resolve_cascade(self.cascade)]
        self.widths = [int(w) for w in self.widths]
        if len(self.widths) != len(self.cascade):
            raise ValueError(f"{len(self.cascade)} blocks need {len(self.cascade)} widths, got {self.widths}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.palette is not None and len(self.palette) < self.num_classes:
            raise ValueError(f"the palette has {len(self.palette)} colours for {self.num_classes} classes")

    @property
    def block_names(self) -> list[str]:
        """Paper names of the blocks, deepest first: RefineNet-4 ... RefineNet-1 for a 4-cascade."""
        n = len(self.cascade)
        return [f"RefineNet-{n - i}" for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefineNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json has unknown fields: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RefineNetConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
