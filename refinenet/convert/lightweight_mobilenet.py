"""The authors' Light-Weight RefineNet on their own MobileNet-v2 (Nekrasov et al., BMVC 2018).

Keys (``tests/data/checkpoint_layouts/drsleep-lw-mobilenetv2-voc21.txt``): backbone ``layer1..layer8``
(our ``AuthorsMobileNetV2Backbone`` uses the same names), 1x1 projections ``conv3..conv8`` of
the six taps, ``crp{j}`` for RefineNet-j (here the numbering is *not* inverted), the coarse-path
convs ``conv_adapt{4,3,2}`` that end RefineNet-4/3/2 and so feed the next block's fusion, and
the classifier ``segm``.

Two taps share stride 16 (layer5, layer6) and two share stride 32 (layer7, layer8); our adapter
projects them in backbone order, so ``project.0`` is the shallower one (conv5, conv7).
"""

from __future__ import annotations

import re

from ..config import RefineNetConfig
from .formats import SourceFormat, StateDict
from .metadata import dataset_metadata

ORIGIN = "the authors' Light-Weight RefineNet (DrSleep/light-weight-refinenet), their MobileNet-v2 backbone"

_PROJECTIONS = {
    "conv7": "refine4.adapt.0.project.0",
    "conv8": "refine4.adapt.0.project.1",
    "conv5": "refine3.adapt.0.project.0",
    "conv6": "refine3.adapt.0.project.1",
    "conv4": "refine2.adapt.0.project.0",
    "conv3": "refine1.adapt.0.project.0",
    "conv_adapt4": "refine3.fusion.convs.1",
    "conv_adapt3": "refine2.fusion.convs.1",
    "conv_adapt2": "refine1.fusion.convs.1",
}
_BACKBONE = re.compile(r"^(layer[1-8]\..+)$")
_CRP = re.compile(r"^crp([1-4])\.0\.(\d)_outvar_dimred\.weight$")
_PLAIN = re.compile(r"^(conv\d|conv_adapt\d)\.weight$")
_CLASSIFIER = re.compile(r"^segm\.(weight|bias)$")

# Keys of the joint segmentation + depth variant (ICRA 2019), which this converter refuses.
MULTITASK_KEYS = ("pre_depth.weight", "depth.weight", "depth.bias", "pre_segm.weight")


def key_rule(key: str) -> str | None:
    """Our key for one checkpoint key, or None when no rule applies."""
    if match := _BACKBONE.match(key):
        return f"backbone.{match.group(1)}"
    if match := _CRP.match(key):
        return f"refine{match.group(1)}.crp.stages.{int(match.group(2)) - 1}.weight"
    if (match := _PLAIN.match(key)) and match.group(1) in _PROJECTIONS:
        return f"{_PROJECTIONS[match.group(1)]}.weight"
    if match := _CLASSIFIER.match(key):
        return f"classifier.{match.group(1)}"
    return None


def _matches(state_dict: StateDict) -> bool:
    return "segm.weight" in state_dict and "conv8.weight" in state_dict and "layer8.0.output.0.0.weight" in state_dict


def _infer_config(state_dict: StateDict) -> RefineNetConfig:
    num_classes = int(state_dict["segm.weight"].shape[0])
    width = int(state_dict["conv8.weight"].shape[0])
    stages = len({m.group(2) for k in state_dict if (m := _CRP.match(k)) and m.group(1) == "4"})
    return RefineNetConfig(
        architecture="lw-refinenet",
        backbone="mobilenetv2-lw-authors",
        num_classes=num_classes,
        widths=[width] * 4,
        cascade=[[4], [3], [2], [1]],
        crp_stages=stages,
        crp_order="pool-conv",
        kernel_size=int(state_dict["conv8.weight"].shape[-1]),
        adapt_rcus=0,
        output_rcus=0,
        activation="relu6",
        fuse_backbone_conv=False,
        **dataset_metadata(num_classes),
    )


LW_REFINENET_MOBILENETV2 = SourceFormat(
    name="lw-refinenet-mobilenetv2",
    summary="Light-Weight RefineNet on the authors' MobileNet-v2 (ReLU6, six taps)",
    origin=ORIGIN,
    matches=_matches,
    infer_config=_infer_config,
    key_rule=key_rule,
)

__all__ = ["LW_REFINENET_MOBILENETV2", "MULTITASK_KEYS", "key_rule"]
