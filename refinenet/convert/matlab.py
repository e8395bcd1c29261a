"""The original MATLAB (MatConvNet) RefineNet models: the refinement part (stretch goal).

What is implemented: the complete, checked key map of the refinement part for both CRP
variants (``tests/data/checkpoint_layouts/matlab-refinenet101-refine-part-*.txt``): 86 tensors onto our
``refine4..refine1`` modules, filters transposed from MatConvNet's ``H x W x Cin x Cout`` to
PyTorch's ``Cout x Cin x H x W`` and biases flattened from ``1 x C``. The "improved" CRP (conv
then pool, names ``poolprev_relu_varout_pb1``, ``pool{j}_outvar_pb{j+1}``) maps onto
``crp_order="conv-pool"``.

What is not: a whole-model conversion. The MATLAB backbone is the Caffe ResNet (stride 2 in the
first 1x1 conv of a downsampling block, not in the 3x3 as in torchvision), its fusion upsampling
is bicubic, and its input is RGB in [0, 255] minus 128 (mean 128/255, std 1/255 on [0, 1]
images). The project's models implement none of the first two, so converting the whole network
would give a model that silently computes something else; :func:`convert_matlab_file` maps and
checks the refinement part, then refuses with that explanation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import RefineNetConfig
from ..folder import tensor_shapes
from .errors import ConversionError
from .keymap import apply_key_map

# RGB in [0, 255] minus 128, expressed on [0, 1] images: (x - 128/255) / (1/255) = 255 x - 128.
MATLAB_MEAN = [128 / 255] * 3
MATLAB_STD = [1 / 255] * 3

_ADAPT = r"^(?:adapt_stage|adapt_input_path)"
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^p_ims1d2_outl(\d)_dimred_filter$"), "refine{b}.adapt.0.project.0.weight"),
    (re.compile(_ADAPT + r"(\d)_b(\d)_conv_filter$"), "refine{b}.adapt.0.rcus.{i}.conv1.weight"),
    (re.compile(_ADAPT + r"(\d)_b(\d)_conv_bias$"), "refine{b}.adapt.0.rcus.{i}.conv1.bias"),
    (re.compile(_ADAPT + r"(\d)_b(\d)_conv_relu_varout_dimred_filter$"), "refine{b}.adapt.0.rcus.{i}.conv2.weight"),
    (re.compile(_ADAPT + r"(\d)_b2_joint_varout_dimred_filter$"), "refine{b}.fusion.convs.0.weight"),
    # original CRP: pool then conv, stage i is "pool{i}"
    (re.compile(r"^mflow_conv_g(\d)_pool(\d)_outvar_dimred_filter$"), "refine{b}.crp.stages.{i}.weight"),
    # improved CRP: conv then pool; stage 1 convolves the block input, stage j+1 the output of pool j
    (re.compile(r"^mflow_conv_g(\d)_poolprev_relu_varout_pb1_filter$"), "refine{b}.crp.stages.0.weight"),
    (re.compile(r"^mflow_conv_g(\d)_pool(\d)_outvar_pb\d_filter$"), "refine{b}.crp.stages.{j}.weight"),
    (re.compile(r"^mflow_conv_g(\d)_b(\d)_conv_filter$"), "refine{b}.output_rcus.{i}.conv1.weight"),
    (re.compile(r"^mflow_conv_g(\d)_b(\d)_conv_bias$"), "refine{b}.output_rcus.{i}.conv1.bias"),
    (re.compile(r"^mflow_conv_g(\d)_b(\d)_conv_relu_varout_dimred_filter$"), "refine{b}.output_rcus.{i}.conv2.weight"),
    (re.compile(r"^mflow_conv_g(\d)_b3_joint_varout_dimred_filter$"), "refine{next}.fusion.convs.1.weight"),
]


def key_rule(key: str) -> str | None:
    """Our key for a MATLAB parameter name of the refinement part (None: no rule)."""
    for pattern, template in _RULES:
        if match := pattern.match(key):
            k = int(match.group(1))
            second = int(match.group(2)) if pattern.groups >= 2 else 1
            return template.format(b=5 - k, next=4 - k, i=second - 1, j=second)
    return None


def value_rule(key: str, value: Tensor) -> Tensor:
    """MatConvNet filters are ``H x W x Cin x Cout``; biases ``1 x C``."""
    if key.endswith("_filter"):
        if value.dim() > 4:
            raise ConversionError(f"{key} should be a 4-d filter, has shape {tuple(value.shape)}")
        # MATLAB drops trailing singleton dimensions (a filter with Cout = 1 is H x W x Cin).
        value = value.reshape(*value.shape, *[1] * (4 - value.dim()))
        return value.permute(3, 2, 0, 1).contiguous()
    return value.reshape(-1).contiguous()


def crp_order(params: Mapping[str, object]) -> str:
    """The CRP variant a MATLAB model uses, judged by its parameter names."""
    return "conv-pool" if any("_poolprev_relu_varout_pb1" in k for k in params) else "pool-conv"


def convert_refine_part(
    params: Mapping[str, np.ndarray | Tensor], backbone: str = "resnet101", num_classes: int = 21
) -> dict[str, Tensor]:
    """Map the refinement-part parameters onto our ``refine*`` tensors, checked totally."""
    config = RefineNetConfig(
        backbone=backbone, num_classes=num_classes, crp_order=crp_order(params), mean=MATLAB_MEAN, std=MATLAB_STD
    )
    targets = {k: v for k, v in tensor_shapes(config).items() if k.startswith("refine")}
    tensors = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    return apply_key_map(tensors, targets, key_rule, value_rule, source_name="MATLAB refinement part")


def read_matconvnet(path: str | Path) -> dict[str, np.ndarray]:
    """``name -> value`` of the parameters of a MatConvNet DagNN ``.mat`` file (``net.params``)."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise ConversionError("reading MATLAB .mat files needs scipy (pip install scipy)") from error
    try:
        # No squeeze_me: it would also squeeze 1x1 filters down to 2-d.
        data = loadmat(str(path), squeeze_me=False, struct_as_record=False)
    except (ValueError, NotImplementedError, OSError) as error:
        raise ConversionError(f"{path} could not be read as a MATLAB (v5/v7) .mat file: {error}") from error
    net = data.get("net")
    params = getattr(net.flat[0], "params", None) if isinstance(net, np.ndarray) and net.size else None
    if params is None:
        raise ConversionError(
            f"{path} has no net.params (a MatConvNet DagNN model); its variables: "
            f"{', '.join(k for k in data if not k.startswith('__'))}"
        )
    return {str(np.asarray(p.name).flat[0]): np.asarray(p.value) for p in params.flat}


def convert_matlab_file(path: str | Path) -> dict[str, Tensor]:
    """Check a MATLAB RefineNet file's refinement part, then refuse the whole-model conversion
    (see the module docstring for why)."""
    params = read_matconvnet(path)
    refine = {k: v for k, v in params.items() if key_rule(k) is not None}
    convert_refine_part(refine)
    raise ConversionError(
        f"{path}: the refinement part ({len(refine)} tensors) maps completely, but a whole-model conversion of the "
        "MATLAB models is not supported: their Caffe ResNet backbone puts the stride-2 in the first 1x1 conv of a "
        "downsampling block and their fusion upsamples bicubically, which this project's models do not implement; "
        f"the other {len(params) - len(refine)} parameters (backbone, classifier) are left unconverted"
    )


__all__ = [
    "MATLAB_MEAN",
    "MATLAB_STD",
    "convert_matlab_file",
    "convert_refine_part",
    "crp_order",
    "key_rule",
    "read_matconvnet",
    "value_rule",
]
