"""Backbones that expose their feature maps by stride, so the decoder never hard-codes channels.

Every backbone returns a list of feature maps described by ``feature_info``: one entry per tap
with its stride relative to the input, its channel count and the RefineNet level it feeds, in the
spirit of timm's ``features_only`` models. Level 1 is the finest (stride 4) and level 4 the
deepest (stride 32): one tap per level for ResNet and torchvision's MobileNetV2, two on levels 3
and 4 for the authors' MobileNet-v2. At output stride 16 (DeepLab's dilated layout) the deepest
level keeps its own blocks and level but is computed at stride 16: its stride-2 convolution runs
at stride 1 and the convolutions after it are dilated by 2, so they see the same context as at
stride 32 without losing resolution.

Module names inside each backbone are those of its usual checkpoints (torchvision's keys for
ResNet and MobileNetV2, the Light-Weight RefineNet authors' keys for theirs), so ImageNet or
converted weights load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.models as tvm
from torch import Tensor, nn

BACKBONES = ("resnet50", "resnet101", "resnet152", "mobilenetv2", "mobilenetv2-lw-authors")
# The output strides a backbone can run at (the stride of its deepest level).
OUTPUT_STRIDES = (16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone exposes: its stride, channels, the module that makes it and the
    RefineNet level (1..4) it feeds."""

    stride: int
    channels: int
    module: str
    level: int


class Backbone(nn.Module):
    """Base class: ``forward(x)`` returns one tensor per entry of ``feature_info``."""

    feature_info: list[FeatureInfo]

    def channels_at(self, level: int) -> list[int]:
        """The channels of each tap on RefineNet ``level`` (1..4)."""
        return [f.channels for f in self.feature_info if f.level == level]

    def level_stride(self, level: int) -> int:
        """The stride at which ``level`` is computed: 4 * 2**(level - 1), except the deepest
        level of a backbone at output stride 16."""
        return min(f.stride for f in self.feature_info if f.level == level)


def _check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be 16 or 32, not {output_stride}")


class ResNetBackbone(Backbone):
    """torchvision ResNet without its classifier; taps ``layer1..layer4`` (strides 4..32, or
    4..16 with ``layer4`` dilated at output stride 16)."""

    def __init__(self, depth: int = 101, weights: str | None = None, output_stride: int = 32) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        builders = {
            50: (tvm.resnet50, tvm.ResNet50_Weights),
            101: (tvm.resnet101, tvm.ResNet101_Weights),
            152: (tvm.resnet152, tvm.ResNet152_Weights),
        }
        if depth not in builders:
            raise ValueError(f"ResNet depth must be 50, 101 or 152, not {depth}")
        build, weight_enum = builders[depth]
        dilate_layer4 = output_stride == 16
        net = build(
            weights=weight_enum[weights] if weights else None,
            replace_stride_with_dilation=[False, False, dilate_layer4],
        )
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        strides = [4, 8, 16, output_stride]
        self.feature_info = [FeatureInfo(strides[i], 256 * 2**i, f"layer{i + 1}", i + 1) for i in range(4)]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features[0:18]`` (the final 1x1 to 1280 channels is dropped).

    Taps after blocks 3, 6, 13 and 17: 24, 32, 96 and 320 channels at strides 4, 8, 16, 32 (the
    last at 16 with ``output_stride=16``: block 14's depthwise convolution runs at stride 1 and
    those of blocks 15-17 are dilated by 2, as in DeepLab's MobileNetV2, whose segmentation
    encoders were trained so). The weights do not change with the output stride.
    """

    taps = {3: 4, 6: 8, 13: 16, 17: 32}

    def __init__(self, weights: str | None = None, output_stride: int = 32) -> None:
        super().__init__()
        _check_output_stride(output_stride)
        net = tvm.mobilenet_v2(weights=tvm.MobileNet_V2_Weights[weights] if weights else None)
        self.features = net.features[:18]
        if output_stride == 16:
            self.features[14].conv[1][0].stride = (1, 1)
            for block in self.features[15:18]:
                depthwise = block.conv[1][0]
                depthwise.dilation, depthwise.padding = (2, 2), (2, 2)
        self.feature_info = [
            FeatureInfo(min(stride, output_stride), self.features[i].out_channels, f"features.{i}", level)
            for level, (i, stride) in enumerate(self.taps.items(), start=1)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


@torch.no_grad()
def rescale_mobilenetv2_taps(backbone: MobileNetV2Backbone, scales: list[float]) -> None:
    """Multiply each tapped feature map of a MobileNetV2 backbone by ``scales[i]``, changing
    nothing else it computes (with batch norm in eval mode).

    A MobileNetV2 stage is a residual stream: the sum of its blocks' projection outputs, each the
    output of a batch norm without activation. Scaling those batch norms' weight and bias by s
    scales the stream by s; dividing by s the weights of the expansion convolutions that read the
    stream (the stage's later blocks and the next stage's first) leaves every later feature as it
    was. Why: an encoder converted from TensorFlow (batch norm folded, then rebuilt from
    statistics) can hand the decoder features ten times larger than torchvision's, and a decoder
    without normalisation, tuned on those, then starts with exploding activations and a gradient
    norm dominated by its shallowest paths.
    """
    features = backbone.features
    taps = sorted(backbone.taps)
    if len(scales) != len(taps):
        raise ValueError(f"one scale per tap ({len(taps)}), got {len(scales)}")
    for tap, scale in zip(taps, scales, strict=True):
        last = tap
        first = last
        while first - 1 >= 1 and features[first - 1].out_channels == features[last].out_channels:
            first -= 1
        for index in range(first, last + 1):
            projection_bn = features[index].conv[-1]
            projection_bn.weight.mul_(scale)
            projection_bn.bias.mul_(scale)
            if index > first:
                features[index].conv[0][0].weight.div_(scale)
        if last + 1 < len(features):
            features[last + 1].conv[0][0].weight.div_(scale)


def _conv_bn(
    in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class _AuthorsInvertedResidual(nn.Module):
    """Inverted residual block of the authors' MobileNet-v2: unlike torchvision's, even the
    expansion-1 block has its 1x1 expansion conv (hence the key ``output.0`` everywhere)."""

    def __init__(self, in_ch: int, out_ch: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.residual = stride == 1 and in_ch == out_ch
        self.output = nn.Sequential(
            _conv_bn(in_ch, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, out_ch, 1, act=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.output(x)
        return x + out if self.residual else out


class AuthorsMobileNetV2Backbone(Backbone):
    """The MobileNet-v2 of the Light-Weight RefineNet authors (keys ``layer1..layer8``).

    Exposes six taps, as their decoder uses them: layer3 (24 ch, stride 4), layer4 (32, 8),
    layer5 and layer6 (64 and 96, 16), layer7 and layer8 (160 and 320, 32).
    """

    # (expansion, channels, blocks, stride) for layer2..layer8, as in the MobileNet-v2 paper.
    settings = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    layer2: nn.Sequential  # layer2..layer8 are set in __init__ with setattr

    def __init__(self) -> None:
        super().__init__()
        self.layer1 = _conv_bn(3, 32, 3, stride=2)
        in_ch, stride = 32, 2
        self.feature_info = []
        for index, (t, c, n, s) in enumerate(self.settings, start=2):
            blocks = [_AuthorsInvertedResidual(in_ch if i == 0 else c, c, t, s if i == 0 else 1) for i in range(n)]
            setattr(self, f"layer{index}", nn.Sequential(*blocks))
            in_ch, stride = c, stride * s
            if index >= 3:
                level = {4: 1, 8: 2, 16: 3, 32: 4}[stride]
                self.feature_info.append(FeatureInfo(stride, c, f"layer{index}", level))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer2(self.layer1(x))
        out = []
        for index in range(3, 9):
            x = getattr(self, f"layer{index}")(x)
            out.append(x)
        return out


# torchvision's weights enum of each backbone that has published weights.
_WEIGHT_ENUMS = {
    "resnet50": tvm.ResNet50_Weights,
    "resnet101": tvm.ResNet101_Weights,
    "resnet152": tvm.ResNet152_Weights,
    "mobilenetv2": tvm.MobileNet_V2_Weights,
}


def torchvision_weight_names(name: str) -> tuple[str, ...]:
    """The torchvision weights names :func:`build_backbone` accepts for the backbone ``name``
    (e.g. ``("IMAGENET1K_V1", "IMAGENET1K_V2")`` for MobileNetV2; none for the authors'
    MobileNet-v2). Only the names of fixed weights: the alias ``DEFAULT`` is left out, since it
    moves to newer weights between torchvision releases."""
    weight_enum = _WEIGHT_ENUMS.get(name)
    if weight_enum is None:
        return ()
    return tuple(key for key, member in weight_enum.__members__.items() if member.name == key)


def torchvision_weights_file(name: str, weights: str) -> str:
    """The file name torchvision stores the weights ``weights`` of the backbone ``name`` under
    in torch's hub cache (``<torch home>/hub/checkpoints/``), e.g. ``mobilenet_v2-b0353104.pth``."""
    if weights not in torchvision_weight_names(name):
        raise ValueError(f"{name} has no torchvision weights {weights!r}")
    return _WEIGHT_ENUMS[name][weights].url.rsplit("/", 1)[-1]


def build_backbone(name: str, weights: str | None = None, output_stride: int = 32) -> Backbone:
    """Build a backbone by name (see ``BACKBONES``); ``weights`` is a torchvision weights name
    such as ``"IMAGENET1K_V1"``, fetched through torchvision's own download and cache;
    ``output_stride`` 16 dilates the deepest level instead of striding it (not for the authors'
    MobileNet-v2, whose checkpoints were trained at 32)."""
    if name.startswith("resnet") and name[6:].isdigit():
        return ResNetBackbone(int(name[6:]), weights, output_stride)
    if name == "mobilenetv2":
        return MobileNetV2Backbone(weights, output_stride)
    if name == "mobilenetv2-lw-authors":
        if weights:
            raise ValueError("the authors' MobileNet-v2 has no torchvision weights; convert their checkpoint")
        if output_stride != 32:
            raise ValueError("the authors' MobileNet-v2 runs at output stride 32 only")
        return AuthorsMobileNetV2Backbone()
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
