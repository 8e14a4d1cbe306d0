"""Attach DoRA to a model: LoRA's target finding and wrapping with :class:`DoraLinear`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from medpeft.methods.dora.layer import DoraLinear
from medpeft.methods.lora.attach import add_lora


def add_dora(
    model: nn.Module,
    targets: Sequence[str] = ("q", "v"),
    rank: int = 4,
    alpha: float = 4.0,
    dropout: float = 0.0,
    blocks: Iterable[int] | None = None,
    adapter_name: str = "default",
) -> list[str]:
    """Add a DoRA adapter called ``adapter_name`` to the target Linears (LoRA's targets);
    return the wrapped names. Errors name the ``dora`` config section."""
    return add_lora(
        model, targets, rank, alpha, dropout, blocks, adapter_name, layer_type=DoraLinear, section="dora"
    )


def dora_layers(model: nn.Module) -> dict[str, DoraLinear]:
    """All DoRA-wrapped layers of a model by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DoraLinear)}


def count_dora_parameters(model: nn.Module, adapter_name: str = "default") -> int:
    """DoRA parameters of one adapter: ``r * (in + seg_out) + seg_out`` per adapted segment."""
    return sum(
        sum(d[adapter_name].numel() for d in (layer.lora_A, layer.lora_B, layer.lora_magnitude))
        for layer in dora_layers(model).values()
        if adapter_name in layer.lora_A
    )
