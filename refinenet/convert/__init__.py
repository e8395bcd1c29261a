"""Converters from every surviving RefineNet checkpoint format to a Hub-layout model folder.

This package is the only place that knows the legacy (MATLAB-era) key names. A conversion
1. reads the file safely (``torch.load(weights_only=True)``) and unwraps its container,
2. detects the layout from the keys (or takes ``fmt``),
3. rebuilds the architecture's config from tensor shapes,
4. renames every tensor through a *total* key map, checked against the model's own keys and
   shapes, and
5. writes ``config.json``, ``model.safetensors`` and a model card that states the weights'
   origin and licence.

Formats: ``refinenet-resnet`` (the authors' PyTorch RefineNet, ResNet-50/101/152, also the ACRV
``refinenet`` package), ``lw-refinenet-resnet`` and ``lw-refinenet-mobilenetv2`` (Light-Weight
RefineNet). For the original MATLAB models (``.mat``), the refinement part maps and is checked
(``matlab.py``), but a whole-model conversion is refused with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor

from ..config import RefineNetConfig
from ..folder import save_pretrained, sha256_file, tensor_shapes
from .containers import normalise_state_dict, read_pickle_checkpoint
from .errors import ConversionError
from .formats import SourceFormat
from .keymap import apply_key_map
from .lightweight_mobilenet import LW_REFINENET_MOBILENETV2, MULTITASK_KEYS
from .matlab import convert_matlab_file
from .metadata import AUTHORS_LICENSE, AUTHORS_LICENSE_NAME, AUTHORS_LICENSE_TEXT, dataset_metadata
from .released import LW_REFINENET_RESNET, REFINENET_RESNET

FORMATS: dict[str, SourceFormat] = {
    f.name: f for f in (REFINENET_RESNET, LW_REFINENET_RESNET, LW_REFINENET_MOBILENETV2)
}


@dataclass
class Conversion:
    """A converted checkpoint: the layout it came in, the rebuilt config and renamed tensors."""

    format: SourceFormat
    config: RefineNetConfig
    state_dict: dict[str, Tensor]
    notes: list[str] = field(default_factory=list)


def detect_format(state_dict: Mapping[str, Tensor]) -> SourceFormat:
    """The source layout of a (container-free, prefix-free) state dict, judged by its keys."""
    depth_head = [k for k in MULTITASK_KEYS if k in state_dict]
    if depth_head:
        raise ConversionError(
            "this is the multi-task (segmentation + depth) Light-Weight RefineNet; converting only its "
            f"segmentation part would silently drop the depth head ({', '.join(depth_head)}), so it is refused"
        )
    if "classifier.weight" in state_dict and any(k.startswith("refine4.") for k in state_dict):
        raise ConversionError(
            "these keys already follow this project's layout (refine4..., classifier); build the model from its "
            "config and save it with save_pretrained instead of converting"
        )
    found = [f for f in FORMATS.values() if f.matches(state_dict)]
    if len(found) != 1:
        sample = ", ".join(list(state_dict)[:8])
        what = "no known RefineNet layout" if not found else f"several layouts ({[f.name for f in found]})"
        raise ConversionError(
            f"{what} matches these keys (first ones: {sample}); pass --format with one of {', '.join(FORMATS)}"
        )
    return found[0]


def convert_state_dict(
    checkpoint: object,
    fmt: str = "auto",
    *,
    class_names: list[str] | None = None,
    dataset: str | None = None,
) -> Conversion:
    """Convert a loaded checkpoint object (any supported container) to our layout."""
    notes: list[str] = []
    source = normalise_state_dict(checkpoint, notes)
    if fmt == "auto":
        source_format = detect_format(source)
        notes.append(f"detected format: {source_format.name}")
    elif fmt in FORMATS:
        source_format = FORMATS[fmt]
    else:
        raise ConversionError(f"unknown format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    config = source_format.infer_config(source)
    if class_names is not None or dataset is not None:
        meta = dataset_metadata(config.num_classes, class_names, dataset)
        config = RefineNetConfig.from_dict({**config.to_dict(), **meta})
    config.license = AUTHORS_LICENSE
    config.description = f"Converted from {source_format.origin}. {AUTHORS_LICENSE_TEXT}"
    state_dict = apply_key_map(
        source,
        tensor_shapes(config),
        source_format.key_rule,
        source_format.value_rule,
        source_name=f"{source_format.name} checkpoint",
    )
    return Conversion(source_format, config, state_dict, notes)


def convert_checkpoint(
    source: str | Path,
    out: str | Path,
    fmt: str = "auto",
    *,
    class_names: list[str] | None = None,
    dataset: str | None = None,
    overwrite: bool = False,
) -> Conversion:
    """Convert the checkpoint file ``source`` into a Hub-layout folder ``out``.

    The folder (config.json, model.safetensors, README.md) is ready for ``refinenet push``; the
    model card records the source file's name and sha256, the detected layout and the authors'
    non-commercial licence.
    """
    source = Path(source)
    if not source.is_file():
        raise ConversionError(f"{source} is not a file")
    if source.suffix.lower() == ".mat":
        convert_matlab_file(source)  # checks the refinement part, then refuses (see matlab.py)
    conversion = convert_state_dict(read_pickle_checkpoint(source), fmt, class_names=class_names, dataset=dataset)
    provenance = {
        "source_file": source.name,
        "source_sha256": sha256_file(source),
        "source_format": conversion.format.name,
        "origin": conversion.format.origin,
        "notes": conversion.notes,
    }
    save_pretrained(
        conversion.state_dict,
        out,
        conversion.config,
        overwrite=overwrite,
        provenance=provenance,
        license_name=AUTHORS_LICENSE_NAME,
        license_text=AUTHORS_LICENSE_TEXT,
    )
    return conversion


__all__ = [
    "FORMATS",
    "Conversion",
    "ConversionError",
    "SourceFormat",
    "convert_checkpoint",
    "convert_state_dict",
    "detect_format",
]
