"""RefineNet semantic segmentation: faithful models, strict weights, and a look inside."""

from .blocks import (
    BlockFeatures,
    ChainedResidualPooling,
    CRPFeatures,
    MultiResolutionFusion,
    RefineNetBlock,
    ResidualConvUnit,
)
from .config import RefineNetConfig
from .hub import from_pretrained, push_to_hub, save_pretrained
from .images import ImageLoadError, load_image
from .inference import SegmentationResult, Segmenter, predict
from .models import (
    LightWeightRefineNet,
    RefineNet,
    SegmentationOutput,
    build_model,
    count_parameters,
    lw_refinenet_mobilenetv2,
    lw_refinenet_resnet50,
    lw_refinenet_resnet101,
    lw_refinenet_resnet152,
    refinenet_mobilenetv2,
    refinenet_resnet50,
    refinenet_resnet101,
    refinenet_resnet152,
)

__version__ = "0.1.0"

__all__ = [
    "BlockFeatures",
    "CRPFeatures",
    "ChainedResidualPooling",
    "ImageLoadError",
    "LightWeightRefineNet",
    "MultiResolutionFusion",
    "RefineNet",
    "RefineNetBlock",
    "RefineNetConfig",
    "ResidualConvUnit",
    "SegmentationOutput",
    "SegmentationResult",
    "Segmenter",
    "build_model",
    "count_parameters",
    "from_pretrained",
    "load_image",
    "lw_refinenet_mobilenetv2",
    "lw_refinenet_resnet101",
    "lw_refinenet_resnet152",
    "lw_refinenet_resnet50",
    "predict",
    "push_to_hub",
    "refinenet_mobilenetv2",
    "refinenet_resnet101",
    "refinenet_resnet152",
    "refinenet_resnet50",
    "save_pretrained",
    "__version__",
]
