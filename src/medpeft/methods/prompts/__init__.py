"""Missing-aware prompts ("MAP", CVPR 2023), the MoRA paper's baseline, as a tuning method.

One prompt set per presence pattern, chosen per sample; ``input`` or ``attention``
placement (:mod:`medpeft.methods.prompts.layer`). Needs a backbone that inserts
prompts (ViLT).
"""

from __future__ import annotations

from torch import nn

from medpeft.methods.base import Method
from medpeft.methods.prompts.attach import add_missing_aware_prompts
from medpeft.methods.prompts.settings import PromptSettings


class MissingAwarePromptsMethod(Method):
    """Learned prompts per presence pattern."""

    name = "prompts"
    settings_type = PromptSettings
    markers = (".prompts.",)
    identity_at_init = False  # random prompts join the token sequence
    needs_tokens = True
    per_modality = True  # one prompt set per presence pattern
    only_kind = "vilt"  # ViLT's classifier inserts the prompts

    def attach(self, model: nn.Module, settings: PromptSettings, adapter_name: str = "default") -> None:
        add_missing_aware_prompts(model, settings.placement, settings.num_layers, settings.length)


__all__ = ["MissingAwarePromptsMethod", "PromptSettings"]
