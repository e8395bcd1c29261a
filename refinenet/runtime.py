"""Where and how a model runs: device choice and the inference fast path.

Kept apart from ``inference`` (images in, label maps out) so that the app, the CLI and the
benchmarks all run the network the same way.
"""

from __future__ import annotations

import torch
from torch import nn


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


def prepare_for_inference(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Put a model in eval mode on ``device`` in channels-last memory format.

    Channels-last matters on the CPU: the 5x5 stride-1 max-pools of CRP run several times faster
    in it than in the default layout.
    """
    device = select_device(device)
    return model.eval().to(device=device, memory_format=torch.channels_last)
