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
BACKBONE_NAMES = ("resnet50", "resnet101", "resnet152", "mobilenetv2", "mobilenetv2-lw-authors")
CRP_ORDERS = ("pool-conv", "conv-pool")
ACTIVATIONS = ("relu", "relu6")

# What a config.json may ask for. Every published RefineNet layout fits well inside these bounds
# (widths up to 512, 4 CRP stages, 2 and 3 RCUs, 21 or 150 classes); a file outside them is a
# mistake or an attack, and is refused before anything is built or allocated: a config is the
# first thing read from an untrusted model folder or Hub repository.
LIMITS: dict[str, tuple[int, int]] = {
    "num_classes": (1, 1024),
    "widths": (1, 2048),
    "crp_stages": (0, 8),
    "kernel_size": (1, 7),
    "adapt_rcus": (0, 8),
    "output_rcus": (0, 8),
    "input_size": (32, 2048),
}
MAX_TEXT = 2_000  # characters of a description, a class name, a licence or a data set name
MAX_CONFIG_BYTES = 256 * 1024  # config.json files are a few kilobytes


class ConfigError(ValueError):
    """A config.json that cannot describe a model: the message names the field and stays short
    (it is shown to whoever typed the model's name)."""


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
    # "" (the folder stores every tensor), or the torchvision weights name (e.g. "IMAGENET1K_V1")
    # of a backbone kept exactly as published while the decoder trained. Such a folder stores the
    # decoder alone and loading takes the backbone from torchvision's weights API (downloaded on
    # first use, from torch's cache after): models that share one frozen encoder (an ablation
    # family comparing decoders) then store it zero times instead of once each.
    frozen_backbone: str = ""
    # The stride of the deepest backbone level: 32 as in the paper, or 16 with that level's
    # convolutions dilated instead of strided (DeepLab's layout; the weights are the same). An
    # encoder trained for segmentation at 16 keeps the context it learnt, and RefineNet-4 refines
    # a map twice as fine, for about a fifth more computation on MobileNetV2.
    output_stride: int = 32

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("backbone", self.backbone, BACKBONE_NAMES)
        _check_choice("crp_order", self.crp_order, CRP_ORDERS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        if not isinstance(self.cascade, str) and not _is_list(self.cascade, 4):
            raise ConfigError("cascade: expected a cascade name or at most 4 lists of backbone levels")
        try:
            self.cascade = [list(b) for b in resolve_cascade(self.cascade)]
        except (TypeError, ValueError) as error:
            raise ConfigError(f"cascade: {_short(error)}") from None
        if not _is_list(self.widths, len(self.cascade)) or len(self.widths) != len(self.cascade):
            raise ConfigError(f"widths: {len(self.cascade)} blocks need {len(self.cascade)} widths")
        self.widths = [_bounded(f"widths[{i}]", w, "widths") for i, w in enumerate(self.widths)]
        for name in ("num_classes", "crp_stages", "kernel_size", "adapt_rcus", "output_rcus", "input_size"):
            setattr(self, name, _bounded(name, getattr(self, name), name))
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size: must be odd (the decoder pads by half), not {self.kernel_size}")
        if not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout: must be a number in [0, 1), not {_short(self.dropout)}")
        for name in ("fuse_backbone_conv", "align_corners"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: must be true or false")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not _is_list(values, 3) or len(values) != 3 or not all(isinstance(v, int | float) for v in values):
                raise ConfigError(f"{name}: must be three numbers (R, G, B)")
        if not all(v > 0 for v in self.std):
            raise ConfigError("std: every value must be positive")
        if self.class_names is not None:
            if not _is_list(self.class_names, self.num_classes) or len(self.class_names) != self.num_classes:
                raise ConfigError(f"class_names: {self.num_classes} classes need {self.num_classes} names")
            if not all(isinstance(n, str) and len(n) <= MAX_TEXT for n in self.class_names):
                raise ConfigError("class_names: every name must be a short text")
        if self.palette is not None:
            if not _is_list(self.palette, 4096) or len(self.palette) < self.num_classes:
                raise ConfigError(f"palette: {self.num_classes} classes need {self.num_classes} colours")
            if not all(_is_colour(c) for c in self.palette):
                raise ConfigError("palette: every colour must be three whole numbers 0..255")
        if self.ignore_index is not None and (
            not isinstance(self.ignore_index, int) or not -1 <= self.ignore_index <= 65535
        ):
            raise ConfigError("ignore_index: must be a whole number 0..65535 or null")
        for name in ("description", "backbone_init", "license"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT):
                raise ConfigError(f"{name}: must be a text of at most {MAX_TEXT} characters")
        if not isinstance(self.frozen_backbone, str):
            raise ConfigError("frozen_backbone: must be a torchvision weights name or empty")
        if self.frozen_backbone:
            # Imported here: torchvision is only needed by configs that name its weights.
            from .backbones import torchvision_weight_names

            names = torchvision_weight_names(self.backbone)
            if self.frozen_backbone not in names:
                accepted = f"one of {', '.join(names)}" if names else "empty (it has no torchvision weights)"
                raise ConfigError(
                    f"frozen_backbone: {_short(self.frozen_backbone)!r} is not a torchvision weights name of the "
                    f"{self.backbone} backbone; use {accepted}"
                )
        if self.output_stride not in (16, 32) or isinstance(self.output_stride, bool):
            raise ConfigError(f"output_stride: must be 16 or 32, not {_short(self.output_stride)}")
        if self.output_stride == 16 and self.backbone == "mobilenetv2-lw-authors":
            raise ConfigError("output_stride: the authors' MobileNet-v2 runs at 32 only")
        if not _is_list(self.datasets, 64) or not all(isinstance(d, str) and len(d) <= MAX_TEXT for d in self.datasets):
            raise ConfigError("datasets: must be a list of at most 64 short texts")

    @property
    def block_names(self) -> list[str]:
        """Paper names of the blocks, deepest first: RefineNet-4 ... RefineNet-1 for a 4-cascade."""
        n = len(self.cascade)
        return [f"RefineNet-{n - i}" for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        """The fields as config.json stores them. An empty ``frozen_backbone`` and the paper's
        ``output_stride`` of 32 are left out, so a folder that does not use them stays readable
        by versions from before those fields."""
        data = asdict(self)
        if not data["frozen_backbone"]:
            del data["frozen_backbone"]
        if data["output_stride"] == 32:
            del data["output_stride"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RefineNetConfig:
        if not isinstance(data, dict):
            raise ConfigError("config.json must hold a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k)[:40] for k in set(data) - known)
        if unknown:
            more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
            raise ConfigError(f"config.json has unknown fields: {', '.join(unknown[:3])}{more}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RefineNetConfig:
        """Read a config.json, refusing files too large to be one before parsing them."""
        path = Path(path)
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config.json is {path.stat().st_size:,} bytes; a config holds a few kilobytes")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"config.json is not valid JSON ({_short(error)})") from None
        return cls.from_dict(data)


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_list(value: object, most: int) -> bool:
    return isinstance(value, list | tuple) and len(value) <= most


def _is_colour(value: object) -> bool:
    if not isinstance(value, list | tuple) or len(value) != 3:
        return False
    return all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: {_short(value)!r} is not one of {', '.join(choices)}")


def _bounded(name: str, value: object, limit: str) -> int:
    low, high = LIMITS[limit]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name}: must be a whole number from {low} to {high}, not {_short(value)}")
    return value
