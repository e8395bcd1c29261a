"""From an RGB image to a label map: pre-processing, the network, post-processing.

:class:`Segmenter` turns images (anything :func:`refinenet.images.load_image` accepts, which
decodes and checks them) into :class:`SegmentationResult` objects; :func:`predict` is the
one-call form. Nothing here knows about user interfaces.

``max_side`` caps the long side of the image fed to the network. Larger images are downscaled
(aspect ratio kept) before the network; the logits are upsampled bilinearly to that *working*
size, the argmax is taken there, and the label map is then resized with nearest-neighbour
interpolation to the original size. Upsampling the logits straight to a 12000 x 9000 original
would need ``classes x 108 M`` floats; the nearest-neighbour step costs one byte per pixel.
Images within the cap take the textbook path exactly: logits upsampled bilinearly to the image
size, then argmax. (The separate limit on decoding, ``max_pixels``, is :mod:`refinenet.images`'s.)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .hub import from_pretrained
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_image
from .models import SegmentationOutput
from .runtime import fast_path, select_device
from .visualize import palette_array
from .zoo import list_pretrained

# Default long-side cap of the network input. 1024 keeps the activations of a ResNet-101
# RefineNet around a gigabyte on the CPU, and keeps objects near the scale the published models
# were trained at (PASCAL VOC images are about 500 pixels wide).
DEFAULT_MAX_SIDE = 1024


@dataclass
class SegmentationResult:
    """One segmented image.

    ``image``: the RGB image that was segmented, upright (EXIF applied), at its original size.
    ``label_map``: ``H x W`` uint8 class indices at the original size.
    ``confidence``: ``H x W`` float32, the largest class probability at every pixel (averaged
    over scales and flips when test-time augmentation is on).
    ``features``: the network's :class:`~refinenet.models.SegmentationOutput` (logits at 1/4 of
    the network input, every RefineNet block, every CRP stage) for the pass at the scale
    nearest 1 without flip, on the CPU; ``None`` unless asked for.
    ``input_size``: ``(h, w)`` of the network input at scale 1, the working resolution at which
    probabilities are averaged (smaller than the image when ``max_side`` capped it).
    ``seconds``: wall-clock time spent in ``preprocess``, ``network`` and ``postprocess``.
    """

    image: Image.Image
    label_map: np.ndarray
    confidence: np.ndarray
    features: SegmentationOutput | None
    input_size: tuple[int, int]
    seconds: dict[str, float] = field(default_factory=dict)


def working_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """The ``(h, w)`` the network sees at scale 1: the image size, or the image scaled down so
    that its long side is ``max_side`` (aspect ratio kept; ``None`` or 0 means no cap)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    factor = max_side / max(height, width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """Network input size for one test-time scale."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


class Segmenter:
    """Runs a RefineNet model on images; holds the model on its device.

    ``device``: ``None`` or ``"auto"`` picks CUDA, then Apple MPS, then the CPU.
    ``max_side``: long-side cap of the network input (see the module docstring); ``None`` uses
    ``max(DEFAULT_MAX_SIDE, model.config.input_size)``, ``0`` disables the cap.
    ``scales`` and ``flip``: test-time augmentation. Every scale (relative to the working size)
    and, with ``flip``, its horizontal mirror is segmented; the softmax probabilities are
    upsampled to the working size, un-mirrored and averaged, then the argmax is taken.
    ``max_pixels``: the hard pixel limit used when loading images.

    The network runs through :func:`refinenet.runtime.fast_path`: an optimised copy on ``device``
    (channels-last, batch norm folded, separable CRP pools; bf16 autocast on CUDA), exact to
    about 1e-6 in fp32 on the CPU. The model passed in is left as it is.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        max_side: int | None = None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        config = getattr(model, "config", None)
        if config is None:
            raise TypeError("Segmenter needs a RefineNet model (with a .config giving classes and mean/std)")
        if config.num_classes > 256:
            raise ValueError("label maps are uint8: at most 256 classes are supported")
        self.config = config
        self.device = select_device(device)
        self.model = fast_path(model, self.device)
        self.dtype = next(self.model.parameters()).dtype
        if max_side is None:
            max_side = max(DEFAULT_MAX_SIDE, int(config.input_size))
        if max_side < 0:
            raise ValueError(f"max_side must be positive (or 0 for no cap), not {max_side}")
        self.max_side = max_side
        self.scales = _check_scales(scales)
        self.flip = bool(flip)
        self.max_pixels = max_pixels
        self._mean = torch.tensor(config.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(config.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    @property
    def palette(self) -> np.ndarray:
        """The model's colours as a ``256 x 3`` lookup table (VOC colours where none are given)."""
        return palette_array(self.config.palette, self.config.num_classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or [f"class {i}" for i in range(self.config.num_classes)])

    def predict(
        self,
        image: ImageSource,
        *,
        return_features: bool = False,
        ablate_stride: int | None = None,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
    ) -> SegmentationResult:
        """Segment one image (anything :func:`load_image` accepts).

        ``ablate_stride`` (4, 8, 16 or 32) zeroes that backbone level inside the network (see
        :class:`~refinenet.models.RefineNet`); ``scales`` and ``flip`` override the defaults.
        """
        start = time.perf_counter()
        rgb = load_image(image, self.max_pixels)
        loaded = time.perf_counter() - start
        result = self._segment([rgb], return_features, ablate_stride, scales, flip)[0]
        result.seconds["preprocess"] += loaded
        return result

    def predict_batch(
        self,
        images: Iterable[ImageSource],
        batch_size: int = 4,
        *,
        return_features: bool = False,
        ablate_stride: int | None = None,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
    ) -> list[SegmentationResult]:
        """Segment several images, in input order.

        Images whose working size is the same are stacked into batches of up to ``batch_size``;
        images of other sizes go in other batches. Nothing is padded: padding would change what
        the border pixels see (CRP's max-pools and the fusion's upsampling reach across the
        padding), so a padded batch would not give the single-image result. The ``seconds`` of
        each result are those of its whole batch.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        start = time.perf_counter()
        loaded = [load_image(image, self.max_pixels) for image in images]
        load_seconds = (time.perf_counter() - start) / max(1, len(loaded))
        groups: dict[tuple[int, int], list[int]] = {}
        for index, rgb in enumerate(loaded):
            groups.setdefault(working_size(rgb.height, rgb.width, self.max_side), []).append(index)
        results: list[SegmentationResult | None] = [None] * len(loaded)
        for indices in groups.values():
            for first in range(0, len(indices), batch_size):
                chunk = indices[first : first + batch_size]
                batch = self._segment([loaded[i] for i in chunk], return_features, ablate_stride, scales, flip)
                for i, result in zip(chunk, batch, strict=True):
                    result.seconds["preprocess"] += load_seconds
                    results[i] = result
        return [r for r in results if r is not None]

    # -- the pipeline ---------------------------------------------------------------------

    def _segment(
        self,
        images: list[Image.Image],
        return_features: bool,
        ablate_stride: int | None,
        scales: Sequence[float] | None,
        flip: bool | None,
    ) -> list[SegmentationResult]:
        """Segment RGB images that share one working size, as one batch."""
        scales = self.scales if scales is None else _check_scales(scales)
        flip = self.flip if flip is None else bool(flip)
        work = working_size(images[0].height, images[0].width, self.max_side)
        feature_scale = min(scales, key=lambda s: (abs(s - 1.0), s))
        single_pass = len(scales) == 1 and not flip
        timing = {"preprocess": 0.0, "network": 0.0, "postprocess": 0.0}
        # Per image: the softmax probabilities summed over the passes, or with one pass its logits.
        summed_scores: list[torch.Tensor | None] = [None] * len(images)
        features: SegmentationOutput | None = None
        passes = 0

        tick = time.perf_counter()
        # Downscale a capped image once; every test-time scale is then taken from the working copy.
        bases = [_resize(rgb, work) for rgb in images]
        timing["preprocess"] += time.perf_counter() - tick
        with torch.inference_mode():
            for scale in scales:
                tick = time.perf_counter()
                batch = self._to_tensor(bases, scaled_size(work, scale))
                timing["preprocess"] += time.perf_counter() - tick
                for mirrored in (False, True) if flip else (False,):
                    tick = time.perf_counter()
                    want_features = return_features and scale == feature_scale and not mirrored
                    output = self.model(
                        batch.flip(-1) if mirrored else batch,
                        return_features=want_features,
                        ablate_stride=ablate_stride,
                    )
                    self._synchronize()
                    timing["network"] += time.perf_counter() - tick

                    tick = time.perf_counter()
                    logits = output.logits if want_features else output
                    if want_features:
                        features = output
                    for i in range(len(images)):
                        # Per image, so that only one classes x H x W map is alive at a time.
                        up = F.interpolate(logits[i : i + 1].float(), size=work, mode="bilinear", align_corners=False)[
                            0
                        ]
                        # One pass keeps its logits: argmax and top probability come from them directly.
                        scores = up if single_pass else up.softmax(dim=0)
                        if mirrored:
                            scores = scores.flip(-1)
                        previous = summed_scores[i]
                        summed_scores[i] = scores if previous is None else previous + scores
                    passes += 1
                    timing["postprocess"] += time.perf_counter() - tick

        tick = time.perf_counter()
        results = []
        for i, (rgb, summed) in enumerate(zip(images, summed_scores, strict=True)):
            assert summed is not None  # every pass scored every image
            if single_pass:
                # The top softmax probability is 1 / sum_c exp(l_c - l_max): no C x H x W softmax.
                top, labels = summed.max(dim=0)
                top_probability = (summed - top).exp_().sum(dim=0).reciprocal_()
            else:
                top_probability, labels = (summed / passes).max(dim=0)
            label_map = labels.to(device="cpu", dtype=torch.uint8).numpy()
            confidence = top_probability.float().cpu().numpy()
            if work != (rgb.height, rgb.width):
                label_map = np.asarray(Image.fromarray(label_map).resize(rgb.size, Image.Resampling.NEAREST))
                confidence = np.asarray(
                    Image.fromarray(confidence, mode="F").resize(rgb.size, Image.Resampling.BILINEAR)
                )
            results.append(
                SegmentationResult(
                    image=rgb,
                    label_map=np.ascontiguousarray(label_map, dtype=np.uint8),
                    confidence=np.ascontiguousarray(confidence, dtype=np.float32),
                    features=_features_to_cpu(features, i) if features is not None else None,
                    input_size=work,
                    seconds=dict(timing),
                )
            )
        elapsed = time.perf_counter() - tick
        for result in results:
            result.seconds["postprocess"] += elapsed
        return results

    def _to_tensor(self, images: list[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """Resize to ``size`` (h, w), stack, normalise with the model's mean/std on RGB in [0, 1]."""
        arrays = [np.asarray(_resize(rgb, size), dtype=np.uint8) for rgb in images]
        batch = torch.from_numpy(np.stack(arrays)).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        batch = (batch - self._mean) / self._std
        return batch.to(dtype=self.dtype).contiguous(memory_format=torch.channels_last)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bilinear resize to ``size`` = (h, w); Pillow's filter widens when shrinking (antialiasing)."""
    height, width = size
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.BILINEAR)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in scales)
    if not values:
        raise ValueError("at least one scale is needed, e.g. (1.0,)")
    if any(not np.isfinite(s) or s <= 0 for s in values):
        raise ValueError(f"scales must be positive numbers, got {values}")
    return values


def _features_to_cpu(output: SegmentationOutput, index: int) -> SegmentationOutput:
    """The features of one image of a batch, as float32 CPU tensors (ready for ``.numpy()``).

    They keep the network's channels-last strides: a copy into the default layout would cost
    as much as the conversion a consumer makes anyway (the demo's float16 cache, for one).
    """

    def take(t: torch.Tensor) -> torch.Tensor:
        return t[index : index + 1].to("cpu").float()

    blocks = tuple(
        replace(
            b,
            output=take(b.output),
            crp=replace(
                b.crp,
                input=take(b.crp.input),
                branches=tuple(take(t) for t in b.crp.branches),
                sums=tuple(take(t) for t in b.crp.sums),
            ),
        )
        for b in output.blocks
    )
    return replace(output, logits=take(output.logits), blocks=blocks)


def predict(
    images: ImageSource | Sequence[ImageSource],
    model: nn.Module | str | Path | None = None,
    **kwargs: Any,
) -> SegmentationResult | list[SegmentationResult]:
    """Segment one image (returns a result) or a list of images (returns a list).

    ``model`` is a model object, or a model folder / zoo id / Hub repo id for
    :func:`refinenet.hub.from_pretrained`; ``None`` means the default model, the zoo's first
    entry (the one the app opens with and ``refinenet predict`` uses without ``--model``).
    ``kwargs`` go to :class:`Segmenter` (``device``, ``max_side``, ``scales``, ``flip``,
    ``max_pixels``) or to :meth:`Segmenter.predict` (``return_features``, ``ablate_stride``).
    """
    if model is None:
        model = list_pretrained()[0].model_id
    if isinstance(model, str | Path):
        model = from_pretrained(model)
    init_keys = ("device", "max_side", "scales", "flip", "max_pixels")
    segmenter = Segmenter(model, **{k: kwargs.pop(k) for k in init_keys if k in kwargs})
    if isinstance(images, list | tuple):
        return [segmenter.predict(image, **kwargs) for image in images]
    # Not a list or tuple: one image (a str or bytes is a Sequence too, but one image here).
    return segmenter.predict(cast(ImageSource, images), **kwargs)


__all__ = [
    "DEFAULT_MAX_SIDE",
    "SegmentationResult",
    "Segmenter",
    "predict",
    "scaled_size",
    "working_size",
]
