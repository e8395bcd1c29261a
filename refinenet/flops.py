"""Multiply-add counts of a network, the figure papers quote as "FLOPs" (conv layers).

One multiply-add per weight per output cell: a ``k x k`` convolution from ``C_in`` to ``C_out``
channels (``g`` groups) producing ``H x W`` outputs costs ``C_out * H * W * (C_in / g) * k * k``.
Fully connected layers count the same way. Element-wise work (batch norm, activations, the
residual sums, pooling, upsampling) is left out, as in the figures of the RefineNet and
Light-Weight RefineNet papers, which this counter reproduces (RefineNet-101 at 512x512:
262.9 G; Light-Weight RefineNet-50/101/152: 32.0/51.4/70.8 G; LW MobileNet-v2: 8.6 G).

The count runs the forward pass on the ``meta`` device: shapes only, no arithmetic, no memory,
so even a ResNet-152 model at a large size is counted in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import nn


@dataclass
class MacCount:
    """Multiply-adds of one forward pass: ``total`` and per layer (qualified module name)."""

    total: int
    by_layer: dict[str, int] = field(default_factory=dict)

    def by_prefix(self, depth: int = 1) -> dict[str, int]:
        """Totals grouped by the first ``depth`` parts of the layer names, e.g. ``backbone``,
        ``refine4`` ... ``classifier`` for ``depth=1``."""
        groups: dict[str, int] = {}
        for name, macs in self.by_layer.items():
            key = ".".join(name.split(".")[:depth])
            groups[key] = groups.get(key, 0) + macs
        return groups

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or linear layer given its output tensor (0 for other layers)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.weight.shape[1]  # input channels per group
        for k in module.weight.shape[2:]:
            per_output *= k
        if module.transposed:
            # A transposed conv scatters every *input* cell through the whole kernel.
            raise NotImplementedError("transposed convolutions are not counted")
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs(
    model: nn.Module,
    input_size: int | Sequence[int] = 512,
    *,
    batch: int = 1,
    in_channels: int = 3,
) -> MacCount:
    """Count the multiply-adds of ``model(x)`` for an input of ``input_size`` (an int for a
    square image, or ``(height, width)``), without computing anything.

    The model's own weights are not touched: the forward pass runs with meta-device stand-ins
    of every parameter and buffer, in eval mode (dropout off), and the model's mode is restored
    afterwards. Works for any model whose forward runs on meta tensors.
    """
    if isinstance(input_size, int):
        height = width = input_size
    else:
        height, width = (int(s) for s in input_size)
    x = torch.empty(batch, in_channels, height, width, device="meta")
    stand_ins = {
        name: torch.empty_like(t, device="meta") for name, t in chain(model.named_parameters(), model.named_buffers())
    }
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd | nn.Linear):

            def hook(mod, inputs, output, name=name):
                counts[name] = counts.get(name, 0) + layer_macs(mod, output)

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            torch.func.functional_call(model, stand_ins, (x,))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return MacCount(total=sum(counts.values()), by_layer=counts)


__all__ = ["MacCount", "count_macs", "layer_macs"]
