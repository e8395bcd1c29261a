"""RefineNet semantic segmentation: faithful models, strict weights, and a look inside.

Architectures by name: :func:`list_models` and :func:`get_model` (or the builder functions,
e.g. :func:`refinenet_resnet101`). Trained weights: :func:`list_pretrained` lists the zoo,
:func:`from_pretrained` loads a zoo id, Hub repo id or model folder, :func:`save_pretrained`
writes a model folder and :func:`push_to_hub` publishes one.
"""

from .blocks import (
    BlockFeatures,
    ChainedResidualPooling,
    CRPFeatures,
    MultiResolutionFusion,
    RefineNetBlock,
    ResidualConvUnit,
)
from .config import RefineNetConfig
from .folder import (
    BundledFallbackWarning,
    IntegrityError,
    ModelNotFoundError,
    StrictLoadError,
    WeightsError,
    save_pretrained,
)
from .hub import from_pretrained, push_to_hub
from .images import ImageLoadError, load_image
from .inference import SegmentationResult, Segmenter, predict
from .models import (
    LightWeightRefineNet,
    RefineNet,
    SegmentationOutput,
    build_model,
    count_parameters,
    get_model,
    list_models,
    lw_refinenet_mobilenetv2,
    lw_refinenet_resnet50,
    lw_refinenet_resnet101,
    lw_refinenet_resnet152,
    refinenet_mobilenetv2,
    refinenet_resnet50,
    refinenet_resnet101,
    refinenet_resnet152,
)
from .runtime import fast_path
from .zoo import list_pretrained

__version__ = "0.1.0"

__all__ = [
    "BlockFeatures",
    "BundledFallbackWarning",
    "CRPFeatures",
    "ChainedResidualPooling",
    "ImageLoadError",
    "IntegrityError",
    "LightWeightRefineNet",
    "ModelNotFoundError",
    "MultiResolutionFusion",
    "RefineNet",
    "RefineNetBlock",
    "RefineNetConfig",
    "ResidualConvUnit",
    "SegmentationOutput",
    "SegmentationResult",
    "Segmenter",
    "StrictLoadError",
    "WeightsError",
    "build_model",
    "count_parameters",
    "fast_path",
    "from_pretrained",
    "get_model",
    "list_models",
    "list_pretrained",
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
