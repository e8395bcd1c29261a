"""The README.md model card of a model folder: Hub metadata (YAML front matter) and a body
that says what the model is, where its weights come from, under which licence, and how to
load it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from .config import RefineNetConfig

LIBRARY_NAME = "refinenet-lab"


def _front_matter(config: RefineNetConfig, metrics: Mapping[str, float] | None, license_name: str | None) -> str:
    data: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "pipeline_tag": "image-segmentation",
        "license": config.license or "other",
    }
    if (config.license or "other") == "other":
        data["license_name"] = license_name or "see-model-card"
    tags = ["semantic-segmentation", "refinenet", config.architecture, config.backbone, "pytorch", "safetensors"]
    data["tags"] = list(dict.fromkeys(tags))
    if config.datasets:
        data["datasets"] = list(config.datasets)
    data["metrics"] = sorted(metrics) if metrics else ["mean_iou"]
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def _architecture_rows(
    config: RefineNetConfig, parameters: int | None, stored_parameters: int | None = None
) -> list[str]:
    blocks = ", ".join(f"{n}: {w}" for n, w in zip(config.block_names, config.widths, strict=True))
    rows = [
        ("architecture", "Light-Weight RefineNet" if config.architecture == "lw-refinenet" else "RefineNet"),
        ("backbone", config.backbone),
        ("blocks (channels), deepest first", blocks),
        ("cascade (backbone levels per block)", str(config.cascade)),
        ("chained residual pooling", f"{config.crp_stages} stages, {config.crp_order}"),
        ("decoder kernel size", f"{config.kernel_size}x{config.kernel_size}"),
        ("RCUs per backbone path / after CRP", f"{config.adapt_rcus} / {config.output_rcus}"),
        ("activation", config.activation),
        ("classes", str(config.num_classes)),
        ("input normalisation", f"RGB in [0, 1], mean {config.mean}, std {config.std}"),
        ("recommended input size", f"{config.input_size} px"),
    ]
    if config.output_stride != 32:
        stride = config.output_stride
        dilated = f"{stride}: the deepest backbone level runs dilated instead of strided (RefineNet-4 at 1/{stride})"
        rows.insert(2, ("output stride", dilated))
    if config.backbone_init:
        rows.insert(2, ("backbone initialisation", config.backbone_init))
    if config.frozen_backbone:
        # The folder holds the decoder alone: say where the rest of the model comes from.
        rows.insert(
            2,
            (
                "backbone weights",
                f"torchvision's `{config.frozen_backbone}` {config.backbone} weights, frozen (kept exactly as "
                "published while the decoder trained); not stored in this folder: loading fetches them with "
                "torchvision's weights API (downloaded on first use, from torch's cache after)",
            ),
        )
    if stored_parameters is not None:
        rows.insert(2, ("parameters stored here (the decoder)", f"{stored_parameters:,}"))
    if parameters is not None:
        rows.insert(2, ("parameters", f"{parameters:,}"))
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def render_model_card(
    config: RefineNetConfig,
    *,
    title: str | None = None,
    repo_id: str | None = None,
    parameters: int | None = None,
    stored_parameters: int | None = None,
    metrics: Mapping[str, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
    license_name: str | None = None,
    license_text: str | None = None,
    sections: Mapping[str, str] | None = None,
) -> str:
    """The full README.md text. ``provenance`` (converted models) records the source file,
    its sha256 and layout; ``metrics`` maps metric names to values in percent; ``sections``
    (heading -> markdown) adds what a trained model's card needs: per-class results, the exact
    training and evaluation commands, data citations. ``stored_parameters`` (a folder with a
    ``frozen_backbone``) counts the parameters the folder itself holds."""
    name = title or f"{'Light-Weight ' if config.architecture == 'lw-refinenet' else ''}RefineNet, {config.backbone}"
    lines = [_front_matter(config, metrics, license_name), f"# {name}", ""]
    if config.description:
        lines += [config.description, ""]
    lines += ["## Architecture", "", *_architecture_rows(config, parameters, stored_parameters), ""]
    if config.class_names:
        lines += ["## Classes", "", ", ".join(f"{i} {n}" for i, n in enumerate(config.class_names)), ""]
    lines += ["## Training data and results", ""]
    lines.append(f"Datasets: {', '.join(config.datasets)}." if config.datasets else "Datasets: not recorded.")
    if metrics:
        lines += ["", "| metric | value |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in metrics.items())]
    lines.append("")
    if provenance:
        lines += ["## Origin", ""]
        lines.append(f"Converted with `refinenet convert` from {provenance.get('origin', 'a legacy checkpoint')}.")
        for key in ("source_file", "source_sha256", "source_format"):
            if key in provenance:
                lines.append(f"- {key.replace('_', ' ')}: `{provenance[key]}`")
        for note in provenance.get("notes", []):
            lines.append(f"- {note}")
        lines.append(
            "- every tensor of the source was mapped, every tensor of the model was produced, "
            "and the model loads strictly"
        )
        lines.append("")
    for heading, body in (sections or {}).items():
        lines += [f"## {heading}", "", body.strip(), ""]
    lines += ["## Licence", "", f"`{config.license or 'other'}`" + (f" ({license_name})" if license_name else "")]
    if license_text:
        lines += ["", license_text]
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "import refinenet",
        "",  # as ruff formats it: the bundled cards are checked by `ruff format --check`
        f'model = refinenet.from_pretrained("{repo_id or "path/to/this/folder"}")  # eval mode, any architecture',
        "logits = model(images)  # N x classes x H/4 x W/4 for normalised N x 3 x H x W input",
        "```",
        "",
        *(
            [
                f"Loading also needs torchvision's `{config.frozen_backbone}` {config.backbone} weights: "
                "torchvision downloads them into torch's cache the first time.",
                "",
            ]
            if config.frozen_backbone
            else []
        ),
        "Publish a folder like this one with `refinenet push FOLDER --repo-id ORG/NAME`.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["LIBRARY_NAME", "render_model_card"]
