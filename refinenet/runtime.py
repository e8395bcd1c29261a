"""Where and how a model runs: device choice and the inference fast path.

Kept apart from ``inference`` (images in, label maps out) so that the app, the CLI and the
benchmarks all run the network the same way.

:func:`fast_path` returns a :class:`FastModel`, the project's default way to run a network. It
works on a *copy* (the original stays loadable and trainable) and applies only tricks that are
exact in fp32 and were measured faster (``benchmarks/README.md`` has the numbers):

* ``torch.inference_mode`` (no autograd bookkeeping);
* channels-last memory layout: the mkldnn convolutions and, above all, the 5x5 stride-1
  max-pools of chained residual pooling run several times faster in it;
* batch norm folded into the preceding convolution (the backbone's BN is an affine map at
  inference time, so ``bn(conv(x))`` is one convolution with rescaled weights);
* the CRP max-pool computed as a separable max (:class:`SeparableMaxPool2d`): a max over a
  ``k x k`` window is a max over ``1 x k`` then ``k x 1``, i.e. ``2(k-1)`` pairwise maxima per
  output cell instead of ``k*k - 1`` comparisons, and exact because max is;
* on CUDA: ``cudnn.benchmark`` and bf16 (or fp16) autocast of the decoder; optionally
  ``torch.compile`` and CUDA graphs. On the CPU, bf16 and ``torch.compile`` are opt-in.

:func:`eager_baseline` is the plain model the benchmark compares against.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeGuard, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

LOW_PRECISION = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """The device to run on: ``preferred`` if given, else CUDA, then Apple MPS, then the CPU."""
    if preferred is not None and str(preferred) != "auto":
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Exact rewrites: same numbers, fewer operations.


class SeparableMaxPool2d(nn.Module):
    """Stride-1 ``k x k`` max-pool with ``k // 2`` padding, computed as ``1 x k`` then ``k x 1``.

    Max over a rectangle is max over its rows of max over each row, and the implicit padding of
    ``nn.MaxPool2d`` is -inf (padded cells never win), so padding with -inf once and taking
    shifted pairwise maxima gives *bit-identical* results. Cost per output cell: ``2(k-1)``
    maxima, memory-bound elementwise ops that run at the same speed in any memory layout,
    against ``k*k - 1`` comparisons of the generic pooling kernel, which is slow in NCHW.
    """

    def __init__(self, kernel_size: int = 5) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, not {kernel_size}")
        self.kernel_size = kernel_size

    @classmethod
    def replaces(cls, module: nn.Module) -> TypeGuard[nn.MaxPool2d]:
        """Whether ``module`` is a max-pool this class computes exactly (square, odd, stride 1,
        'same' padding, no dilation, floor mode)."""
        if not isinstance(module, nn.MaxPool2d):
            return False
        k, s, p, d = (_pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation))
        return (
            k[0] == k[1]
            and k[0] % 2 == 1
            and s == (1, 1)
            and p == (k[0] // 2, k[0] // 2)
            and d == (1, 1)
            and not module.ceil_mode
            and not module.return_indices
        )

    def forward(self, x: Tensor) -> Tensor:
        k = self.kernel_size
        if k == 1:
            return x
        pad = k // 2
        height, width = x.shape[-2:]
        padded = F.pad(x, (pad, pad, pad, pad), value=float("-inf"))
        rows = torch.maximum(padded[..., 0:width], padded[..., 1 : width + 1])
        for shift in range(2, k):
            torch.maximum(rows, padded[..., shift : width + shift], out=rows)
        out = torch.maximum(rows[..., 0:height, :], rows[..., 1 : height + 1, :])
        for shift in range(2, k):
            torch.maximum(out, rows[..., shift : height + shift, :], out=out)
        return out


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    # tuple(): a module may hold a list; the comparisons in `replaces` need a tuple.
    return (value, value) if isinstance(value, int) else cast(tuple[int, int], tuple(value))


def replace_max_pools(model: nn.Module) -> int:
    """Swap every stride-1 'same' max-pool for a :class:`SeparableMaxPool2d` (in place).

    Pools have no parameters, so the state dict is unchanged. Returns how many were replaced.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if SeparableMaxPool2d.replaces(child):
                setattr(parent, name, SeparableMaxPool2d(_pair(child.kernel_size)[0]))
                count += 1
    return count


def fold_batch_norms(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d into that conv (in place).

    At inference BN is ``y = gamma * (x - mean) / sqrt(var + eps) + beta``, an affine map per
    channel, so ``bn(conv(x))`` equals one convolution with rescaled weights and a bias. The BN
    becomes ``nn.Identity`` and the conv gains a bias: *the state dict changes*, so call this
    on a copy (:func:`fast_path` does). Conv->BN pairs are found by tracing the forward with
    ``torch.fx`` (a module that cannot be traced is searched child by child), and a pair is
    folded only when the conv's output feeds nothing but that BN and each is called once.
    Returns the folded ``(conv, bn)`` module names.
    """
    if model.training:
        raise ValueError("fold_batch_norms needs a model in eval mode (training BN uses batch statistics)")
    # A module registered under two names (a wrapper that also exposes ``backbone``) is traced
    # under both: look every name up, and fold each conv only once.
    modules = dict(model.named_modules(remove_duplicate=False))
    folded, seen = [], set()
    for conv_name, bn_name in _conv_bn_pairs(model, ""):
        conv, bn = modules[conv_name], modules[bn_name]
        if id(conv) in seen:
            continue
        seen.add(id(conv))
        _set_submodule(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(model, bn_name, nn.Identity())
        folded.append((conv_name, bn_name))
    return folded


def _conv_bn_pairs(module: nn.Module, prefix: str) -> list[tuple[str, str]]:
    if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) or not any(True for _ in module.children()):
        return []
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # data-dependent control flow (e.g. the decoder's size checks): go deeper
        pairs = []
        for name, child in module.named_children():
            pairs += _conv_bn_pairs(child, f"{prefix}{name}.")
        return pairs
    submodules = dict(module.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(submodules[node.target], nn.BatchNorm2d):
            continue
        bn = submodules[node.target]
        source = node.args[0] if node.args else None
        if (
            not isinstance(source, torch.fx.Node)
            or source.op != "call_module"
            or not isinstance(source.target, str)  # always, for call_module
            or not isinstance(submodules[source.target], nn.Conv2d)
        ):
            continue
        if (
            len(source.users) != 1
            or calls[source.target] != 1
            or calls[node.target] != 1
            or not bn.track_running_stats
            or bn.running_mean is None
        ):
            continue
        pairs.append((prefix + source.target, prefix + node.target))
    return pairs


def _set_submodule(root: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, child_name = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child_name, module)


# --------------------------------------------------------------------------------------------
# The fast path.


@dataclasses.dataclass
class FastPathSettings:
    """What :func:`fast_path` applied; ``describe()`` of the model the benchmark records."""

    device: str
    channels_last: bool
    fold_bn: bool
    separable_pool: bool
    dtype: str
    compile: bool
    cuda_graphs: bool
    cudnn_benchmark: bool
    low_precision_backbone: bool = False
    folded_batch_norms: int = 0
    replaced_pools: int = 0


class FastModel(nn.Module):
    """A segmentation network ready for fast inference; call it like the model it wraps.

    ``fast(x)`` returns fp32 logits (``N x classes x H/4 x W/4``, contiguous) whatever precision
    ran inside. ``fast(x, return_features=True)`` and ``ablate_stride`` are passed to the wrapped
    model and always run eagerly (compiled graphs and CUDA graphs only cover the plain call).
    ``model`` is the optimised copy: its state dict is *not* that of the original (BN folded).
    ``config`` is the wrapped model's configuration (``None`` for a model without one), so a
    :class:`~refinenet.inference.Segmenter` accepts a fast model as it accepts the original.
    Nothing else of the wrapped model shows through: code that needs the network's structure
    reads it from the model's outputs (:class:`~refinenet.models.SegmentationOutput`).
    """

    def __init__(self, model: nn.Module, settings: FastPathSettings, compiled: Callable | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)
        self.settings = settings
        self.device = torch.device(settings.device)
        self.autocast_dtype = LOW_PRECISION.get(settings.dtype)
        # Plain containers, not attributes: a compiled module assigned directly would register as
        # a second submodule and duplicate every key of the state dict.
        self._runners: dict[str, Callable | None] = {"compiled": compiled}
        self._graphs: dict[tuple, tuple] = {}

    def train(self, mode: bool = True) -> FastModel:
        """Always eval mode: the copy has its BN folded away, so it cannot be trained."""
        if mode:
            raise RuntimeError("a FastModel is for inference only (its batch norms are folded); train the original")
        return super().train(False)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _input(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.settings.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor, return_features: bool = False, ablate_stride: int | None = None):
        x = self._input(x)
        with torch.inference_mode(), self._autocast():
            if return_features or ablate_stride is not None:
                out = self.model(x, return_features=return_features, ablate_stride=ablate_stride)
                if return_features:
                    return dataclasses.replace(out, logits=out.logits.float().contiguous())
                return out.float().contiguous()
            if self.settings.cuda_graphs and self.device.type == "cuda":
                return self._replay(x)
            run = self._plain_runner()
            return run(x).float().contiguous()

    def _plain_runner(self) -> Callable:
        compiled = self._runners["compiled"]
        return compiled if compiled is not None else self.model

    def _replay(self, x: Tensor) -> Tensor:
        """Run through a CUDA graph captured once per input shape (kernel launches dominate a
        small batch on a fast GPU). The captured graph reads a static input buffer and writes a
        static output; we copy in, replay, and clone out."""
        key = (tuple(x.shape), x.dtype, x.stride())
        if key not in self._graphs:
            static_in = x.clone()
            run = self._plain_runner()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up on a side stream: cudnn.benchmark picks its algorithms here
                    run(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = run(static_in).float().contiguous()
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def describe(self) -> dict:
        return dataclasses.asdict(self.settings)


def fast_path(
    model: nn.Module,
    device: torch.device | str | None = None,
    *,
    dtype: str | None = "auto",
    channels_last: bool = True,
    fold_bn: bool = True,
    separable_pool: bool = True,
    compile: bool | str = False,
    cuda_graphs: bool = False,
    low_precision_backbone: bool = False,
) -> FastModel:
    """The project's default way to run a network: an optimised *copy* of ``model``.

    ``dtype``: ``"auto"`` is fp32 on the CPU (exact to ~1e-6) and bf16 autocast on a CUDA GPU
    that supports it (fp16 otherwise); ``None``/``"fp32"`` forces fp32; ``"bf16"``/``"fp16"``
    force autocast. Under autocast the backbone still runs in fp32 (TF32 on recent GPUs) unless
    ``low_precision_backbone``: the depthwise convolutions of MobileNetV2 lose too much in bf16
    (logits off by 1-2 % with the backbone in bf16, 0.3 % with only the decoder in bf16), and
    the decoder is where the multiply-adds are.

    ``compile``: ``torch.compile`` the plain forward (a string is used as the compile mode); on
    the CPU with inductor's weight freezing. Off by default: its warm-up takes tens of seconds
    and comes again for every new input size, which an app fed with photos of every size, or a
    one-image CLI run, never earns back (``benchmarks/README.md`` has the measurements).
    ``cuda_graphs`` replays a captured graph per input shape on CUDA (fixed-size serving).
    The returned model is in eval mode on ``device``; the original is untouched.
    """
    device = select_device(device)
    net = copy.deepcopy(model).eval()
    folded: list = []
    if fold_bn:
        folded = fold_batch_norms(net)
    replaced = replace_max_pools(net) if separable_pool else 0
    net = net.to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if dtype in (None, "fp32", "float32"):
        dtype = "fp32"
    elif dtype == "auto":
        if device.type == "cuda":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "fp32"
    elif dtype not in LOW_PRECISION:
        raise ValueError(f"unknown dtype {dtype!r}; expected 'auto', 'fp32', 'bf16' or 'fp16'")
    if dtype != "fp32" and not low_precision_backbone and hasattr(net, "backbone"):
        _keep_fp32(cast(nn.Module, net.backbone), device.type)
    cudnn = device.type == "cuda"
    if cudnn:
        torch.backends.cudnn.benchmark = True
    compiled = None
    if compile:
        mode = compile if isinstance(compile, str) else None
        # Freezing lets inductor treat the weights as constants and pre-pack them for oneDNN.
        # (torch.compile takes a mode or options, not both.)
        options: dict[str, str | int | bool | Callable[..., Any]] | None = (
            {"freezing": True} if device.type == "cpu" and mode is None else None
        )
        compiled = torch.compile(net, mode=mode, options=options)
    settings = FastPathSettings(
        device=str(device),
        channels_last=channels_last,
        fold_bn=fold_bn,
        separable_pool=separable_pool,
        dtype=dtype,
        compile=bool(compile),
        cuda_graphs=bool(cuda_graphs and device.type == "cuda"),
        cudnn_benchmark=cudnn,
        low_precision_backbone=low_precision_backbone and dtype != "fp32",
        folded_batch_norms=len(folded),
        replaced_pools=replaced,
    )
    return FastModel(net, settings, compiled).eval()


def _keep_fp32(module: nn.Module, device_type: str) -> None:
    """Make ``module`` run with autocast switched off (its inputs are the fp32 image).

    The instance gets a bound method that wraps its class's ``forward``; structure and
    attributes stay as they are (the decoder still finds ``backbone.feature_info``), and, being
    a bound method rather than a closure, it is rebound to the copy when the model is
    deep-copied, so a copy never runs the original's weights.
    """
    # Module.__setattr__ is annotated for tensors and modules only, but stores any value.
    module._autocast_off_device = device_type  # type: ignore[assignment]
    module.forward = types.MethodType(_forward_without_autocast, module)


def _forward_without_autocast(self: nn.Module, *args, **kwargs):
    with torch.autocast(device_type=cast(str, self._autocast_off_device), enabled=False):
        return type(self).forward(self, *args, **kwargs)


def eager_baseline(model: nn.Module, device: torch.device | str | None = None) -> Callable[[Tensor], Tensor]:
    """The honest baseline the benchmark compares against: the model as a user would first run
    it (eval mode, fp32, default NCHW layout, ``torch.no_grad``), without any of the above."""
    device = select_device(device)
    net = model.eval().to(device)

    def run(x: Tensor) -> Tensor:
        with torch.no_grad():
            return net(x.to(device))

    return run


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure the computation."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


__all__ = [
    "FastModel",
    "FastPathSettings",
    "SeparableMaxPool2d",
    "eager_baseline",
    "fast_path",
    "fold_batch_norms",
    "replace_max_pools",
    "select_device",
    "synchronize",
]
