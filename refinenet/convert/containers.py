"""Getting a flat state dict out of whatever a legacy checkpoint file wraps it in.

The surviving RefineNet checkpoints come as a bare state dict, or as a dict
holding it under ``"model"``, ``"segmenter"`` (the Light-Weight RefineNet training script) or
``"state_dict"``, next to bookkeeping such as epochs and optimiser states. Keys saved from
``nn.DataParallel`` carry a ``module.`` prefix, and files from PyTorch < 0.4.1 lack the
``num_batches_tracked`` counters of batch norm.

Legacy ``.pth`` files are pickles; they are read only here, and only through
``torch.load(weights_only=True)``, which refuses to run arbitrary code from the file.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TypeGuard

import torch
from torch import Tensor

from .errors import ConversionError

# Where training scripts put the weights, tried in this order.
CONTAINER_KEYS = ("state_dict", "model", "segmenter")
DATA_PARALLEL_PREFIX = "module."


def read_pickle_checkpoint(path: str | Path) -> object:
    """Read a legacy ``.pth``/``.pth.tar`` file safely (tensors and plain containers only)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ConversionError(
            f"{path} could not be read as a PyTorch checkpoint with torch.load(weights_only=True): {error}. "
            "Only files that hold tensors and plain containers are accepted (no pickled code)."
        ) from error


def _is_zip(path: Path) -> bool:
    # Memory-mapping works only for the zip format of torch >= 1.6; older files are read whole.
    return zipfile.is_zipfile(path)


def _is_tensor_dict(obj: object) -> TypeGuard[Mapping[str, Tensor]]:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def unwrap_state_dict(obj: object, notes: list[str] | None = None) -> dict[str, Tensor]:
    """The flat ``{name: tensor}`` dict inside a checkpoint object.

    Accepts a bare state dict or a dict with the weights under one of ``CONTAINER_KEYS``
    (recursively, for files that nest them). Anything else is an error naming what was found.
    """
    notes = notes if notes is not None else []
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                notes.append(f"weights found under the {key!r} entry of the checkpoint")
                return unwrap_state_dict(obj[key], notes)
        described = ", ".join(f"{k!r} ({type(v).__name__})" for k, v in list(obj.items())[:12])
        raise ConversionError(
            "the checkpoint is a dict but neither a state dict (names -> tensors) nor a container with one "
            f"under {', '.join(repr(k) for k in CONTAINER_KEYS)}; its entries: {described or 'none'}"
        )
    raise ConversionError(f"the checkpoint holds a {type(obj).__name__}, not a state dict")


def strip_data_parallel_prefix(state_dict: dict[str, Tensor], notes: list[str] | None = None) -> dict[str, Tensor]:
    """Remove the ``module.`` prefix that ``nn.DataParallel``/DDP adds to every key."""
    prefixed = [k for k in state_dict if k.startswith(DATA_PARALLEL_PREFIX)]
    if not prefixed:
        return state_dict
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        name = key[len(DATA_PARALLEL_PREFIX) :] if key.startswith(DATA_PARALLEL_PREFIX) else key
        if name in out:
            raise ConversionError(f"the key {name!r} appears both with and without the 'module.' prefix")
        out[name] = value
    if notes is not None:
        notes.append(f"removed the DataParallel 'module.' prefix from {len(prefixed)} keys")
    return out


def fill_num_batches_tracked(state_dict: dict[str, Tensor], notes: list[str] | None = None) -> dict[str, Tensor]:
    """Add the ``num_batches_tracked`` counter (a 0-d int64 zero) to every batch norm lacking it.

    Safe because batch norm reads the counter only to compute a cumulative moving average when
    its ``momentum`` is None; with the default momentum (all these models) the counter is
    bookkeeping that affects neither inference nor the running statistics, so zero is as good
    as the true count. A batch norm is recognised by its ``running_mean`` buffer.
    """
    out = dict(state_dict)
    added = 0
    for key in state_dict:
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            if counter not in out:
                out[counter] = torch.zeros((), dtype=torch.int64)
                added += 1
    if added and notes is not None:
        notes.append(f"added {added} missing batch-norm num_batches_tracked counters (zeros)")
    return out


def normalise_state_dict(obj: object, notes: list[str] | None = None) -> dict[str, Tensor]:
    """Container, prefix and batch-norm counter handling in one call."""
    state_dict = unwrap_state_dict(obj, notes)
    state_dict = strip_data_parallel_prefix(state_dict, notes)
    return fill_num_batches_tracked(state_dict, notes)


__all__ = [
    "CONTAINER_KEYS",
    "fill_num_batches_tracked",
    "normalise_state_dict",
    "read_pickle_checkpoint",
    "strip_data_parallel_prefix",
    "unwrap_state_dict",
]
