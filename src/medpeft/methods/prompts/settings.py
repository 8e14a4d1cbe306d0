"""Missing-aware prompt sizes and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medpeft.methods.base import is_int, require
from medpeft.methods.prompts.layer import PLACEMENTS


@dataclass
class PromptSettings:
    """Missing-aware prompt sizes (MAP: 6 layers of 16 tokens, input-level)."""

    num_layers: int = 6
    length: int = 16
    placement: Literal["input", "attention"] = "input"

    def __post_init__(self) -> None:
        for key in ("num_layers", "length"):
            value = getattr(self, key)
            require(is_int(value) and value >= 1, f"prompts.{key}", "an integer >= 1", value)
        require(self.placement in PLACEMENTS, "prompts.placement", f"one of {PLACEMENTS}", self.placement)
