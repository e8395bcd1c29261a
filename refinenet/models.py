"""RefineNet and Light-Weight RefineNet: a backbone plus a top-down cascade of RefineNet blocks.

RefineNet-4 (the deepest, Lin et al., CVPR 2017, section 3.1) refines the 1/32 backbone
features; each following block fuses the previous block's output with a finer backbone level,
down to RefineNet-1 at 1/4, after which a 3x3 classifier predicts class scores at 1/4 of the
input resolution.

The default layout is that of the authors' released models, so that their checkpoints load
unchanged: two RCUs on every backbone path, the previous block's output enters fusion without
RCUs, three output RCUs per block, widths 512 (RefineNet-4) and 256. Light-Weight RefineNet
(Nekrasov et al., BMVC 2018) is the same cascade with every RCU removed and every decoder
convolution 1x1.

Every builder function is registered by name: :func:`list_models` lists the names and
:func:`get_model` builds one, e.g. ``get_model("lw_refinenet_mobilenetv2", num_classes=11)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from torch import Tensor, nn

from .backbones import Backbone, build_backbone
from .blocks import Activation, BlockFeatures, CRPOrder, RefineNetBlock, conv
from .config import LEVEL_STRIDES, RefineNetConfig, resolve_cascade


@dataclass(frozen=True)
class BackboneLevel:
    """One backbone level as the decoder received it in this run: the stride the paper names it
    by (4 ... 32; a backbone at output stride 16 computes the "32" level at 16, which ``size``
    shows), its channels (summed over the level's taps) and the ``(h, w)`` of its feature maps."""

    stride: int
    channels: int
    size: tuple[int, int]
    computed_stride: int | None = None  # where it differs from ``stride`` (output stride 16)


@dataclass
class SegmentationOutput:
    """What ``model(x, return_features=True)`` returns.

    ``logits``: ``N x classes x H/4 x W/4`` (``stride`` is 4). ``blocks``: one
    :class:`~refinenet.blocks.BlockFeatures` per RefineNet block, deepest first (RefineNet-4,
    -3, -2, -1 for the standard 4-cascade), each with its output, stride and CRP stages.
    ``block_levels``: for each entry of ``blocks``, the strides of the backbone levels that block
    fuses, finest first. ``backbone``: the backbone levels, finest first. The last two describe
    the wiring of the network that ran, so a consumer (the demo's architecture diagram) needs
    nothing but this output.
    """

    logits: Tensor
    stride: int
    blocks: tuple[BlockFeatures, ...]
    block_levels: tuple[tuple[int, ...], ...] = ()
    backbone: tuple[BackboneLevel, ...] = ()

    def block(self, name: str) -> BlockFeatures:
        """A block by its paper name, e.g. ``"RefineNet-4"``."""
        for b in self.blocks:
            if b.name == name:
                return b
        raise KeyError(f"no block named {name!r}; this model has {[b.name for b in self.blocks]}")

    def levels_of(self, name: str) -> tuple[int, ...]:
        """Strides of the backbone levels the block ``name`` fuses, finest first."""
        for b, levels in zip(self.blocks, self.block_levels, strict=True):
            if b.name == name:
                return levels
        raise KeyError(f"no block named {name!r}; this model has {[b.name for b in self.blocks]}")


class RefineNet(nn.Module):
    """RefineNet (Lin et al., CVPR 2017) built from a :class:`RefineNetConfig`.

    Blocks are attributes named as in the paper (``refine4`` ... ``refine1``), so for example
    ``model.refine4.crp.stages[2]`` is the third CRP convolution of RefineNet-4.
    """

    def __init__(self, config: RefineNetConfig, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = (
            backbone if backbone is not None else build_backbone(config.backbone, output_stride=config.output_stride)
        )
        self.block_names = config.block_names
        self.block_levels = [tuple(sorted(levels)) for levels in config.cascade]  # finest first
        coarse_channels: int | None = None
        for name, levels, width in zip(self.block_names, self.block_levels, config.widths, strict=True):
            block = RefineNetBlock(
                [self.backbone.channels_at(lv) for lv in levels],
                coarse_channels,
                width,
                kernel_size=config.kernel_size,
                adapt_rcus=config.adapt_rcus,
                output_rcus=config.output_rcus,
                crp_stages=config.crp_stages,
                # The config holds plain strings (from JSON); the block rejects unknown ones.
                crp_order=cast(CRPOrder, config.crp_order),
                activation=cast(Activation, config.activation),
                fuse_backbone_conv=config.fuse_backbone_conv,
                align_corners=config.align_corners,
            )
            self.add_module(_attribute(name), block)
            coarse_channels = width
        self.dropout = nn.Dropout(config.dropout)
        assert coarse_channels is not None  # the config has at least one block
        self.classifier = conv(coarse_channels, config.num_classes, 3, bias=True)

    def blocks(self) -> list[tuple[str, RefineNetBlock]]:
        """The RefineNet blocks with their paper names, deepest first."""
        return [(name, getattr(self, _attribute(name))) for name in self.block_names]

    def block_stride(self, name: str) -> int:
        """The stride of the block's output: that of the finest level it fuses."""
        levels = self.block_levels[self.block_names.index(name)]
        return self.backbone.level_stride(min(levels))

    def forward(
        self, x: Tensor, return_features: bool = False, ablate_stride: int | None = None
    ) -> Tensor | SegmentationOutput:
        """Logits at 1/4 of the input size, or a :class:`SegmentationOutput` with
        ``return_features=True``.

        ``ablate_stride`` (4, 8, 16 or 32) zeroes the backbone level the paper names by that
        stride (1/4 ... 1/32; at output stride 16 the "1/32" level is the deepest one, computed
        at 1/16) before it enters the decoder, cutting one long-range path to show what it
        contributes.
        """
        taps = self.backbone(x)
        if ablate_stride is not None:
            if ablate_stride not in LEVEL_STRIDES.values():
                raise ValueError(f"ablate_stride must be 4, 8, 16 or 32, not {ablate_stride}")
            taps = [
                t.new_zeros(()).expand_as(t) if LEVEL_STRIDES[f.level] == ablate_stride else t
                for t, f in zip(taps, self.backbone.feature_info, strict=True)
            ]
        by_level: dict[int, list[Tensor]] = {lv: [] for lv in LEVEL_STRIDES}
        for tap, info in zip(taps, self.backbone.feature_info, strict=True):
            # The released code regularises the two deepest levels with dropout while training.
            if info.level >= 3:
                tap = self.dropout(tap)
            by_level[info.level].append(tap)

        coarse = None
        recorded = []
        for (name, block), levels in zip(self.blocks(), self.block_levels, strict=True):
            paths = [by_level[lv] for lv in levels]
            if return_features:
                coarse, crp = block(paths, coarse, record=True)
                recorded.append(BlockFeatures(name, self.block_stride(name), coarse, crp))
            else:
                coarse = block(paths, coarse)
        logits = self.classifier(self.dropout(coarse))
        if return_features:
            block_levels = tuple(tuple(LEVEL_STRIDES[lv] for lv in levels) for levels in self.block_levels)
            backbone = tuple(
                BackboneLevel(
                    LEVEL_STRIDES[lv],
                    sum(t.shape[1] for t in maps),
                    (maps[0].shape[-2], maps[0].shape[-1]),
                    computed if (computed := self.backbone.level_stride(lv)) != LEVEL_STRIDES[lv] else None,
                )
                for lv, maps in sorted(by_level.items())
                if maps
            )
            return SegmentationOutput(
                logits, self.block_stride(self.block_names[-1]), tuple(recorded), block_levels, backbone
            )
        return logits


class LightWeightRefineNet(RefineNet):
    """Light-Weight RefineNet (Nekrasov, Shen, Reid, BMVC 2018): the RefineNet cascade without
    RCUs and with 1x1 decoder convolutions (CRP included), about 3x fewer parameters than
    RefineNet on the same backbone. Build it with the ``lw_refinenet_*`` functions."""

    def __init__(self, config: RefineNetConfig, backbone: Backbone | None = None) -> None:
        if config.architecture != "lw-refinenet":
            raise ValueError("LightWeightRefineNet needs a config with architecture='lw-refinenet'")
        super().__init__(config, backbone)


def _attribute(block_name: str) -> str:
    """``"RefineNet-4"`` -> ``"refine4"``."""
    return "refine" + block_name.rsplit("-", 1)[1]


def build_model(config: RefineNetConfig, backbone_weights: str | None = None) -> RefineNet:
    """Build the model a config describes, with random decoder weights.

    ``backbone_weights`` (e.g. ``"IMAGENET1K_V1"``) initialises the backbone from torchvision.
    """
    backbone = build_backbone(config.backbone, backbone_weights, config.output_stride)
    cls = LightWeightRefineNet if config.architecture == "lw-refinenet" else RefineNet
    return cls(config, backbone)


def _default_widths(blocks: int, deepest: int, rest: int) -> list[int]:
    return [deepest] + [rest] * (blocks - 1)


def _refinenet(
    backbone: str,
    num_classes: int,
    widths: Sequence[int] | None,
    cascade: str | Sequence[Sequence[int]],
    crp_stages: int,
    crp_order: str,
    backbone_weights: str | None,
    **metadata,
) -> RefineNet:
    levels = resolve_cascade(cascade)
    config = RefineNetConfig(
        architecture="refinenet",
        backbone=backbone,
        num_classes=num_classes,
        widths=list(widths) if widths is not None else _default_widths(len(levels), 512, 256),
        cascade=[list(b) for b in levels],
        crp_stages=crp_stages,
        crp_order=crp_order,
        **metadata,
    )
    return build_model(config, backbone_weights)


def refinenet_resnet50(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    cascade: str | Sequence[Sequence[int]] = "4-cascade",
    crp_stages: int = 4,
    crp_order: str = "pool-conv",
    backbone_weights: str | None = None,
    **metadata,
) -> RefineNet:
    """RefineNet on ResNet-50 in the released layout (widths 512/256/256/256 by default)."""
    return _refinenet("resnet50", num_classes, widths, cascade, crp_stages, crp_order, backbone_weights, **metadata)


def refinenet_resnet101(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    cascade: str | Sequence[Sequence[int]] = "4-cascade",
    crp_stages: int = 4,
    crp_order: str = "pool-conv",
    backbone_weights: str | None = None,
    **metadata,
) -> RefineNet:
    """RefineNet on ResNet-101 in the released layout: 118,052,437 parameters for 21 classes."""
    return _refinenet("resnet101", num_classes, widths, cascade, crp_stages, crp_order, backbone_weights, **metadata)


def refinenet_resnet152(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    cascade: str | Sequence[Sequence[int]] = "4-cascade",
    crp_stages: int = 4,
    crp_order: str = "pool-conv",
    backbone_weights: str | None = None,
    **metadata,
) -> RefineNet:
    """RefineNet on ResNet-152 in the released layout."""
    return _refinenet("resnet152", num_classes, widths, cascade, crp_stages, crp_order, backbone_weights, **metadata)


def refinenet_mobilenetv2(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    cascade: str | Sequence[Sequence[int]] = "4-cascade",
    crp_stages: int = 4,
    crp_order: str = "pool-conv",
    backbone_weights: str | None = None,
    **metadata,
) -> RefineNet:
    """RefineNet (RCUs, 3x3 CRP) on torchvision MobileNetV2, taps at 1/4, 1/8, 1/16, 1/32."""
    return _refinenet("mobilenetv2", num_classes, widths, cascade, crp_stages, crp_order, backbone_weights, **metadata)


def _lw_refinenet(
    backbone: str,
    num_classes: int,
    widths: Sequence[int] | None,
    crp_stages: int,
    backbone_weights: str | None,
    **overrides,
) -> LightWeightRefineNet:
    defaults: dict[str, Any] = dict(
        architecture="lw-refinenet",
        backbone=backbone,
        num_classes=num_classes,
        widths=list(widths) if widths is not None else [512, 256, 256, 256],
        crp_stages=crp_stages,
        kernel_size=1,
        adapt_rcus=0,
        output_rcus=0,
    )
    defaults.update(overrides)
    # architecture="lw-refinenet" makes build_model build a LightWeightRefineNet.
    return cast(LightWeightRefineNet, build_model(RefineNetConfig(**defaults), backbone_weights))


def lw_refinenet_resnet50(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    crp_stages: int = 4,
    backbone_weights: str | None = None,
    **metadata,
) -> LightWeightRefineNet:
    """Light-Weight RefineNet on ResNet-50 (27.36 M parameters for 21 classes)."""
    return _lw_refinenet("resnet50", num_classes, widths, crp_stages, backbone_weights, **metadata)


def lw_refinenet_resnet101(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    crp_stages: int = 4,
    backbone_weights: str | None = None,
    **metadata,
) -> LightWeightRefineNet:
    """Light-Weight RefineNet on ResNet-101 (46.35 M parameters for 21 classes)."""
    return _lw_refinenet("resnet101", num_classes, widths, crp_stages, backbone_weights, **metadata)


def lw_refinenet_resnet152(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    crp_stages: int = 4,
    backbone_weights: str | None = None,
    **metadata,
) -> LightWeightRefineNet:
    """Light-Weight RefineNet on ResNet-152 (61.99 M parameters for 21 classes)."""
    return _lw_refinenet("resnet152", num_classes, widths, crp_stages, backbone_weights, **metadata)


def lw_refinenet_mobilenetv2(
    num_classes: int = 21,
    *,
    widths: Sequence[int] | None = None,
    crp_stages: int = 4,
    backbone_weights: str | None = None,
    authors_layout: bool = False,
    **metadata,
) -> LightWeightRefineNet:
    """Light-Weight RefineNet on MobileNetV2.

    ``authors_layout=True`` builds the authors' own model (3.28 M parameters for 21 classes):
    their MobileNet-v2 with six taps, width 256 everywhere, ReLU6, and no fusion convolution on
    the backbone paths (their 1x1 projections already produce the block width). Otherwise the
    backbone is torchvision's MobileNetV2 and the decoder is the ResNet Light-Weight layout.
    """
    if authors_layout:
        return _lw_refinenet(
            "mobilenetv2-lw-authors",
            num_classes,
            widths or [256] * 4,
            crp_stages,
            backbone_weights,
            activation="relu6",
            fuse_backbone_conv=False,
            **metadata,
        )
    return _lw_refinenet("mobilenetv2", num_classes, widths or [256] * 4, crp_stages, backbone_weights, **metadata)


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


# The architectures by name, as ``list_models`` / ``get_model`` offer them: one entry per builder.
MODEL_BUILDERS: dict[str, Callable[..., RefineNet]] = {
    builder.__name__: builder
    for builder in (
        refinenet_resnet50,
        refinenet_resnet101,
        refinenet_resnet152,
        refinenet_mobilenetv2,
        lw_refinenet_resnet50,
        lw_refinenet_resnet101,
        lw_refinenet_resnet152,
        lw_refinenet_mobilenetv2,
    )
}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the architecture builders (sorted), optionally filtered by a shell-style pattern,
    e.g. ``list_models("lw_*")``. For trained weights see :func:`refinenet.zoo.list_pretrained`."""
    return sorted(name for name in MODEL_BUILDERS if fnmatch.fnmatchcase(name, pattern))


def get_model(name: str, **kwargs) -> RefineNet:
    """Build the architecture ``name`` (one of :func:`list_models`); ``kwargs`` go to its builder,
    e.g. ``get_model("refinenet_resnet101", num_classes=21, backbone_weights="IMAGENET1K_V1")``."""
    try:
        builder = MODEL_BUILDERS[name]
    except KeyError:
        raise KeyError(f"no architecture {name!r}; known: {', '.join(list_models())}") from None
    return builder(**kwargs)


__all__ = [
    "MODEL_BUILDERS",
    "LightWeightRefineNet",
    "RefineNet",
    "SegmentationOutput",
    "build_model",
    "count_parameters",
    "get_model",
    "list_models",
    "lw_refinenet_mobilenetv2",
    "lw_refinenet_resnet50",
    "lw_refinenet_resnet101",
    "lw_refinenet_resnet152",
    "refinenet_mobilenetv2",
    "refinenet_resnet50",
    "refinenet_resnet101",
    "refinenet_resnet152",
]
