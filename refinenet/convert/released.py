"""The authors' PyTorch RefineNet and Light-Weight RefineNet on ResNet-50/101/152.

One naming scheme covers three code bases: ``refinenet-pytorch`` (the PyTorch port of the
MATLAB RefineNet), the ACRV ``refinenet`` package on PyPI (identical keys, checked against
``tests/data/checkpoint_layouts/acrv-*.txt``), and the ResNet models of ``light-weight-refinenet``, whose
keys are the same minus every RCU (Light-Weight RefineNet drops them).

The names come from the MATLAB graph and count blocks from the deepest: ``g1``, ``outl1`` and
``stage1`` belong to the paper's RefineNet-4, so block ``k`` of the checkpoint is our
``refine{5-k}``. The coarse-path fusion conv ``mflow_conv_g{k}_b3_joint_varout_dimred`` runs at
the end of checkpoint block ``k`` but is the fusion input conv of the *next* block,
``refine{4-k}.fusion.convs.1``.
"""

from __future__ import annotations

import re

from ..config import RefineNetConfig
from .errors import ConversionError
from .formats import SourceFormat, StateDict
from .metadata import dataset_metadata

ORIGIN = (
    "the authors' PyTorch RefineNet (DrSleep/refinenet-pytorch, and the ACRV `refinenet` package on PyPI, "
    "which uses the same keys)"
)
LW_ORIGIN = "the authors' Light-Weight RefineNet (DrSleep/light-weight-refinenet), ResNet backbone"

# ResNet depth from the number of bottleneck blocks in layer3 (torchvision layouts).
_DEPTH_BY_LAYER3 = {6: 50, 23: 101, 36: 152}

_BACKBONE = re.compile(r"^(conv1|bn1|layer[1-4])\.(.+)$")
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^p_ims1d2_outl(\d)_dimred\.weight$"), "refine{b}.adapt.0.project.0.weight"),
    (re.compile(r"^adapt_stage(\d)_b\.0\.(\d)_conv\.(weight|bias)$"), "refine{b}.adapt.0.rcus.{i}.conv1.{p}"),
    (
        re.compile(r"^adapt_stage(\d)_b\.0\.(\d)_conv_relu_varout_dimred\.weight$"),
        "refine{b}.adapt.0.rcus.{i}.conv2.weight",
    ),
    (re.compile(r"^adapt_stage(\d)_b2_joint_varout_dimred\.weight$"), "refine{b}.fusion.convs.0.weight"),
    (re.compile(r"^mflow_conv_g(\d)_pool\.0\.(\d)_outvar_dimred\.weight$"), "refine{b}.crp.stages.{i}.weight"),
    (re.compile(r"^mflow_conv_g(\d)_b\.0\.(\d)_conv\.(weight|bias)$"), "refine{b}.output_rcus.{i}.conv1.{p}"),
    (
        re.compile(r"^mflow_conv_g(\d)_b\.0\.(\d)_conv_relu_varout_dimred\.weight$"),
        "refine{b}.output_rcus.{i}.conv2.weight",
    ),
    # The coarse-path conv belongs to the next (finer) block's fusion: b = 4 - k, not 5 - k.
    (re.compile(r"^mflow_conv_g(\d)_b3_joint_varout_dimred\.weight$"), "refine{next}.fusion.convs.1.weight"),
    (re.compile(r"^clf_conv\.(weight|bias)$"), "classifier.{p0}"),
]


def key_rule(key: str) -> str | None:
    """Our key for one checkpoint key, or None when no rule applies."""
    match = _BACKBONE.match(key)
    if match:
        return f"backbone.{match.group(1)}.{match.group(2)}"
    for pattern, template in _RULES:
        match = pattern.match(key)
        if not match:
            continue
        groups = match.groups()
        if template.startswith("classifier"):
            return template.format(p0=groups[0])
        k = int(groups[0])
        if not 1 <= k <= 4:
            return None
        fields: dict[str, int | str] = {"b": 5 - k, "next": 4 - k}
        if len(groups) >= 2 and groups[1].isdigit():
            fields["i"] = int(groups[1]) - 1  # MATLAB counts from 1
        if groups[-1] in ("weight", "bias"):
            fields["p"] = groups[-1]
        return template.format(**fields)
    return None


def _count(state_dict: StateDict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.match(k))})


def _has_rcus(state_dict: StateDict) -> bool:
    return any(k.endswith("_conv_relu_varout_dimred.weight") for k in state_dict)


def _matches(state_dict: StateDict) -> bool:
    return "clf_conv.weight" in state_dict and "p_ims1d2_outl1_dimred.weight" in state_dict


def _infer_config(state_dict: StateDict, architecture: str) -> RefineNetConfig:
    blocks = _count(state_dict, r"^layer3\.(\d+)\.")
    if blocks not in _DEPTH_BY_LAYER3:
        raise ConversionError(f"layer3 has {blocks} blocks; expected 6, 23 or 36 (ResNet-50, -101 or -152)")
    try:
        dimred = [state_dict[f"p_ims1d2_outl{k}_dimred.weight"] for k in range(1, 5)]
    except KeyError as error:
        raise ConversionError(f"the checkpoint lacks the backbone adaptation conv {error}") from error
    num_classes = int(state_dict["clf_conv.weight"].shape[0])
    lightweight = architecture == "lw-refinenet"
    return RefineNetConfig(
        architecture=architecture,
        backbone=f"resnet{_DEPTH_BY_LAYER3[blocks]}",
        num_classes=num_classes,
        widths=[int(w.shape[0]) for w in dimred],
        cascade=[[4], [3], [2], [1]],
        crp_stages=_count(state_dict, r"^mflow_conv_g1_pool\.0\.(\d+)_outvar_dimred\.weight$"),
        crp_order="pool-conv",
        kernel_size=int(dimred[0].shape[-1]),
        adapt_rcus=0 if lightweight else _count(state_dict, r"^adapt_stage1_b\.0\.(\d+)_conv\.weight$"),
        output_rcus=0 if lightweight else _count(state_dict, r"^mflow_conv_g1_b\.0\.(\d+)_conv\.weight$"),
        activation="relu",
        fuse_backbone_conv=True,
        **dataset_metadata(num_classes),
    )


REFINENET_RESNET = SourceFormat(
    name="refinenet-resnet",
    summary="RefineNet (RCUs, 3x3 CRP) on ResNet-50/101/152, keys of the authors' PyTorch port",
    origin=ORIGIN,
    matches=lambda sd: _matches(sd) and _has_rcus(sd),
    infer_config=lambda sd: _infer_config(sd, "refinenet"),
    key_rule=key_rule,
)

LW_REFINENET_RESNET = SourceFormat(
    name="lw-refinenet-resnet",
    summary="Light-Weight RefineNet (no RCUs, 1x1 CRP) on ResNet-50/101/152",
    origin=LW_ORIGIN,
    matches=lambda sd: _matches(sd) and not _has_rcus(sd),
    infer_config=lambda sd: _infer_config(sd, "lw-refinenet"),
    key_rule=key_rule,
)

__all__ = ["LW_REFINENET_RESNET", "REFINENET_RESNET", "key_rule"]
