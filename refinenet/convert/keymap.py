"""A total key map: every source tensor used once, every model tensor produced once.

The published loaders used ``load_state_dict(strict=False)`` and silently left half a network
random when names drifted. Here a conversion either accounts for every tensor
on both sides, with matching shapes, or fails with the exact leftovers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .errors import ConversionError

KeyRule = Callable[[str], "str | None"]
ValueRule = Callable[[str, Tensor], Tensor]

_LISTED = 25  # how many offending keys an error message shows per category


def _listing(title: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:_LISTED])
    more = f"\n    ... and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return f"  {title} ({len(items)}):\n    {shown}{more}"


def apply_key_map(
    source: Mapping[str, Tensor],
    target_shapes: Mapping[str, torch.Size],
    key_rule: KeyRule,
    value_rule: ValueRule | None = None,
    source_name: str = "checkpoint",
) -> dict[str, Tensor]:
    """Rename ``source`` into the model's key space with ``key_rule`` (``None`` = no rule).

    ``value_rule(source_key, tensor)`` may reshape a tensor (MATLAB filters are HxWxCinxCout);
    it defaults to the identity. Raises :class:`ConversionError` listing source keys without a
    rule, rules that collide or name a tensor the model does not have, model tensors nobody
    produced, and shape mismatches.
    """
    produced: dict[str, Tensor] = {}
    produced_from: dict[str, str] = {}
    no_rule, collisions, foreign = [], [], []
    for key, value in source.items():
        target = key_rule(key)
        if target is None:
            no_rule.append(key)
            continue
        if target in produced:
            collisions.append(f"{key} and {produced_from[target]} -> {target}")
            continue
        if target not in target_shapes:
            foreign.append(f"{key} -> {target}")
            continue
        produced[target] = value_rule(key, value) if value_rule is not None else value
        produced_from[target] = key
    missing = [k for k in target_shapes if k not in produced]
    mismatched = [
        f"{produced_from[k]} {tuple(v.shape)} -> {k} {tuple(target_shapes[k])}"
        for k, v in produced.items()
        if tuple(v.shape) != tuple(target_shapes[k])
    ]
    problems = [
        _listing(title, items)
        for title, items in (
            (f"{source_name} tensors no rule consumes", no_rule),
            ("tensors mapped onto the same model tensor", collisions),
            ("tensors mapped to names the model does not have", foreign),
            ("model tensors no checkpoint tensor produces", missing),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        raise ConversionError(f"the {source_name} does not map completely onto the model:\n" + "\n".join(problems))
    return produced


__all__ = ["KeyRule", "ValueRule", "apply_key_map"]
