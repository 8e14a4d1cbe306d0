"""Attach missing-aware prompts to a backbone that inserts them (ViLT)."""

from __future__ import annotations

from torch import nn

from medpeft.errors import ConfigError
from medpeft.methods.prompts.layer import MissingAwarePrompts


def add_missing_aware_prompts(
    model: nn.Module, placement: str = "input", num_layers: int = 6, length: int = 16
) -> MissingAwarePrompts:
    """Attach prompts as ``model.prompts`` to a backbone that inserts them (ViltClassifier)."""
    if not hasattr(model, "prompts"):
        raise ConfigError(
            f"{type(model).__name__} does not support missing-aware prompts; method 'prompts' "
            "needs model kind 'vilt' (image + text)"
        )
    depth = len(model.blocks)
    if num_layers > depth:
        raise ConfigError(f"{num_layers} prompt layers exceed the model's {depth} blocks")
    ref = next(model.parameters())
    prompts = MissingAwarePrompts(len(model.modalities), model.dim, num_layers, length, placement)
    model.prompts = prompts.to(device=ref.device, dtype=ref.dtype)
    return model.prompts
