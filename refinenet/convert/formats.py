"""What every source family provides to the converter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from ..config import RefineNetConfig
from .keymap import KeyRule, ValueRule

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class SourceFormat:
    """A legacy checkpoint layout: how to recognise it, rebuild its config and rename its keys.

    ``origin`` names the code bases that wrote such files; it goes into the model card.
    """

    name: str
    summary: str
    origin: str
    matches: Callable[[StateDict], bool]
    infer_config: Callable[[StateDict], RefineNetConfig]
    key_rule: KeyRule
    value_rule: ValueRule | None = None


__all__ = ["SourceFormat", "StateDict"]
