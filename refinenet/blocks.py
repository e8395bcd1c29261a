"""The building blocks of a RefineNet block (Lin et al., CVPR 2017, section 3.2).

Every block here is residual in the paper's sense: identity shortcuts with no non-linearity on
the shortcut, so that gradients reach the backbone through short and long paths alike.

All blocks can *record* their intermediate tensors for teaching (the CRP stages, the fused
input). Recording is an explicit argument of ``forward`` rather than a forward hook, so it works
with in-place-free code paths and never changes the computed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

CRPOrder = Literal["pool-conv", "conv-pool"]
Activation = Literal["relu", "relu6"]


def conv(in_channels: int, out_channels: int, kernel_size: int, bias: bool = False) -> nn.Conv2d:
    """A stride-1 convolution with 'same' padding, the only kind the decoder uses."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def activation_layer(kind: Activation) -> nn.Module:
    """ReLU for the ResNet models, ReLU6 for the authors' MobileNet-v2 Light-Weight RefineNet."""
    if kind == "relu":
        return nn.ReLU()
    if kind == "relu6":
        return nn.ReLU6()
    raise ValueError(f"unknown activation {kind!r}; expected 'relu' or 'relu6'")


class ResidualConvUnit(nn.Module):
    """Residual conv unit (RCU), paper Fig. 2(b): ``x + conv(relu(conv(relu(x))))``.

    No batch norm, as in the paper. In the released code the first convolution has a bias and
    the second has none; we keep that so the published checkpoints load.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = conv(channels, channels, kernel_size, bias=True)
        self.conv2 = conv(channels, channels, kernel_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiResolutionFusion(nn.Module):
    """Multi-resolution fusion (MRF), paper Fig. 2(c).

    One convolution per input path brings every path to ``out_channels`` (the smallest channel
    count among the inputs), then each path is upsampled bilinearly to the *exact* size of the
    largest input and the paths are summed. Exact-size upsampling (rather than a fixed factor 2)
    is what lets any input size work, odd ones included.

    A fusion with a single input has nothing to fuse and is the identity (no parameters), as for
    RefineNet-4 in the paper. ``conv_paths`` lets a path skip its convolution; the authors'
    MobileNet-v2 Light-Weight RefineNet uses that for its backbone path, which is already
    projected to the right width.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        kernel_size: int = 3,
        conv_paths: Sequence[bool] | None = None,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        if not in_channels:
            raise ValueError("MultiResolutionFusion needs at least one input path")
        conv_paths = [True] * len(in_channels) if conv_paths is None else list(conv_paths)
        if len(conv_paths) != len(in_channels):
            raise ValueError("conv_paths must have one entry per input path")
        self.align_corners = align_corners
        self.convs = nn.ModuleList()
        if len(in_channels) == 1:
            if in_channels[0] != out_channels:
                raise ValueError("a single-path fusion is the identity: channels must match")
            self.convs.append(nn.Identity())
            return
        for channels, use_conv in zip(in_channels, conv_paths, strict=True):
            if use_conv:
                self.convs.append(conv(channels, out_channels, kernel_size))
            elif channels == out_channels:
                self.convs.append(nn.Identity())
            else:
                raise ValueError(f"a path of {channels} channels needs a conv to {out_channels}")

    def forward(self, paths: Sequence[Tensor]) -> Tensor:
        if len(paths) != len(self.convs):
            raise ValueError(f"expected {len(self.convs)} input paths, got {len(paths)}")
        if len(paths) == 1:
            return paths[0]
        # The convolution runs before upsampling: same result as after, at a fraction of the cost.
        projected = [c(p) for c, p in zip(self.convs, paths, strict=True)]
        height = max(p.shape[-2] for p in projected)
        width = max(p.shape[-1] for p in projected)
        fused = None
        for p in projected:
            if p.shape[-2:] != (height, width):
                p = F.interpolate(p, size=(height, width), mode="bilinear", align_corners=self.align_corners)
            fused = p if fused is None else fused + p
        assert fused is not None  # two or more paths
        return fused


@dataclass
class CRPFeatures:
    """What chained residual pooling computed, stage by stage (all ``N x C x H x W``).

    ``input`` is the block's fused input after the leading activation; ``branches[i]`` is the
    pooled-and-convolved path of stage ``i+1``; ``sums[i]`` is the running sum after stage
    ``i+1``, so ``sums[-1]`` is the CRP output (both are empty for a block without CRP stages,
    whose output is ``input``).
    """

    input: Tensor
    branches: tuple[Tensor, ...]
    sums: tuple[Tensor, ...]

    def positive_share(self) -> float:
        """Share of the input's values above zero. 0.0 means the leading ReLU passed nothing: the
        block's output no longer depends on the image (a "dead" block, which training logs and the
        demo names)."""
        return float((self.input > 0).float().mean())


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling (CRP), paper Fig. 2(d) and section 3.2.

    ``x = act(x)``, then for each stage ``path = conv(maxpool5x5(path)); x = x + path``. Each
    stage pools the previous stage's *output*, so with stride-1 5x5 pooling the window seen by
    stage ``i`` grows as 5, 9, 13, 17 cells of the block's grid: large context from small pools.

    ``num_stages=0`` removes the pooling chain and leaves the activation alone: the paper's
    ablation of CRP (section 5), where the block's fused input goes straight to its output RCUs.

    ``order="conv-pool"`` is the authors' "improved" CRP (used for NYUDv2, PASCAL-Context, ...):
    each stage convolves first and pools second.
    """

    pool_size = 5

    def __init__(
        self,
        channels: int,
        num_stages: int = 4,
        kernel_size: int = 3,
        order: CRPOrder = "pool-conv",
        activation: Activation = "relu",
    ) -> None:
        super().__init__()
        if order not in ("pool-conv", "conv-pool"):
            raise ValueError(f"unknown CRP order {order!r}; expected 'pool-conv' or 'conv-pool'")
        if num_stages < 0:
            raise ValueError(f"CRP stages must be 0 or more, not {num_stages}")
        self.order = order
        self.activation = activation_layer(activation)
        self.pool = nn.MaxPool2d(self.pool_size, stride=1, padding=self.pool_size // 2)
        self.stages = nn.ModuleList(conv(channels, channels, kernel_size) for _ in range(num_stages))

    def context_cells(self) -> list[int]:
        """Side of the pooling window seen by each stage, in cells of this block's grid."""
        growth = self.pool_size - 1
        return [1 + growth * (i + 1) for i in range(len(self.stages))]

    def forward(self, x: Tensor, record: bool = False) -> Tensor | tuple[Tensor, CRPFeatures]:
        x = self.activation(x)
        start = x
        path = x
        branches, sums = [], []
        for stage_conv in self.stages:
            if self.order == "pool-conv":
                path = stage_conv(self.pool(path))
            else:
                path = self.pool(stage_conv(path))
            x = x + path
            if record:
                branches.append(path)
                sums.append(x)
        if record:
            return x, CRPFeatures(start, tuple(branches), tuple(sums))
        return x


class BackbonePathAdapter(nn.Module):
    """Adaptation of one backbone level before fusion (the paper's "adaptive convolution").

    Projects the level's feature map(s) to the block width (the released code's ``dimred``
    convolution; several taps at the same stride are projected and summed, as in the authors'
    MobileNet-v2 model), then applies ``num_rcus`` residual conv units (2 in the released
    RefineNet, 0 in Light-Weight RefineNet).
    """

    def __init__(self, in_channels: Sequence[int], width: int, kernel_size: int, num_rcus: int) -> None:
        super().__init__()
        self.project = nn.ModuleList(conv(c, width, kernel_size) for c in in_channels)
        self.rcus = nn.Sequential(*(ResidualConvUnit(width, kernel_size) for _ in range(num_rcus)))

    def forward(self, taps: Sequence[Tensor]) -> Tensor:
        if len(taps) != len(self.project):
            raise ValueError(f"expected {len(self.project)} feature maps, got {len(taps)}")
        x = None
        for proj, tap in zip(self.project, taps, strict=True):
            x = proj(tap) if x is None else x + proj(tap)
        return self.rcus(x)


@dataclass
class BlockFeatures:
    """The output of one RefineNet block with its CRP internals, for inspection.

    ``name`` is the paper's ("RefineNet-4" is the deepest); ``stride`` is the block's output
    resolution relative to the input image; ``output`` is ``N x width x H/stride x W/stride``.
    """

    name: str
    stride: int
    output: Tensor
    crp: CRPFeatures


class RefineNetBlock(nn.Module):
    """One RefineNet block, paper Fig. 2(a): adaptation, fusion, CRP, output convolutions.

    Inputs are ordered finest backbone level first, the previous block's output (the "coarse
    path", which needs no adaptation) last. The fused map has the resolution of the finest input.
    """

    def __init__(
        self,
        backbone_channels: Sequence[Sequence[int]],
        coarse_channels: int | None,
        width: int,
        *,
        kernel_size: int = 3,
        adapt_rcus: int = 2,
        output_rcus: int = 3,
        crp_stages: int = 4,
        crp_order: CRPOrder = "pool-conv",
        activation: Activation = "relu",
        fuse_backbone_conv: bool = True,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(
            BackbonePathAdapter(taps, width, kernel_size, adapt_rcus) for taps in backbone_channels
        )
        in_channels = [width] * len(backbone_channels)
        conv_paths = [fuse_backbone_conv] * len(backbone_channels)
        if coarse_channels is not None:
            in_channels.append(coarse_channels)
            conv_paths.append(True)
        self.fusion = MultiResolutionFusion(in_channels, width, kernel_size, conv_paths, align_corners)
        self.crp = ChainedResidualPooling(width, crp_stages, kernel_size, crp_order, activation)
        self.output_rcus = nn.Sequential(*(ResidualConvUnit(width, kernel_size) for _ in range(output_rcus)))
        self.out_channels = width

    def forward(
        self, backbone_paths: Sequence[Sequence[Tensor]], coarse: Tensor | None = None, record: bool = False
    ) -> Tensor | tuple[Tensor, CRPFeatures]:
        paths = [adapter(taps) for adapter, taps in zip(self.adapt, backbone_paths, strict=True)]
        if coarse is not None:
            paths.append(coarse)
        fused = self.fusion(paths)
        if record:
            x, crp = self.crp(fused, record=True)
            return self.output_rcus(x), crp
        return self.output_rcus(self.crp(fused))


__all__ = [
    "Activation",
    "BackbonePathAdapter",
    "BlockFeatures",
    "CRPFeatures",
    "CRPOrder",
    "ChainedResidualPooling",
    "MultiResolutionFusion",
    "RefineNetBlock",
    "ResidualConvUnit",
    "activation_layer",
    "conv",
]
