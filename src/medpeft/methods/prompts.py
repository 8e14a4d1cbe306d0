"""Missing-aware prompts ("MAP", CVPR 2023), the MoRA paper's baseline, as a tuning method.

One prompt set per presence pattern, chosen per sample; ``input`` or ``attention``
placement (:mod:`medpeft.adapters.prompts`). Needs a backbone that inserts prompts
(ViLT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from medpeft.adapters.prompts import PLACEMENTS, add_missing_aware_prompts
from medpeft.methods.base import Method, is_int, require


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


class MissingAwarePromptsMethod(Method):
    """Learned prompts per presence pattern."""

    name = "prompts"
    settings_type = PromptSettings
    markers = (".prompts.",)
    identity_at_init = False  # random prompts join the token sequence

    def attach(self, model: nn.Module, settings: PromptSettings, adapter_name: str = "default") -> None:
        add_missing_aware_prompts(model, settings.placement, settings.num_layers, settings.length)
