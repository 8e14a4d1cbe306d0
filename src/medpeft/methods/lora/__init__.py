"""LoRA for ViT diagnosis ("MeLo", arXiv 2311.08236) as a tuning method.

Defaults: q and v of every block's fused ``attn.qkv``, r=4, alpha=4 (scale 1).
The layer is :class:`medpeft.methods.lora.layer.LoRALinear`, attached by
:mod:`medpeft.methods.lora.attach`; on ViLT the names ``q``, ``k``, ``v`` mean
``attention.query``/``key``/``value``.
"""

from __future__ import annotations

from torch import nn

from medpeft.methods.base import Method
from medpeft.methods.lora.attach import add_lora, merge_lora, unmerge_lora
from medpeft.methods.lora.settings import LoraSettings


class LoRA(Method):
    """Low-rank updates on chosen Linears; mergeable."""

    name = "lora"
    settings_type = LoraSettings
    markers = (".lora_",)
    adapter_dicts = ("lora_A", "lora_B")
    mergeable = True
    mixable = True

    def attach(self, model: nn.Module, settings: LoraSettings, adapter_name: str = "default") -> None:
        aliases = getattr(model, "target_aliases", {})
        targets = [aliases.get(t, t) for t in settings.targets]
        add_lora(
            model, targets, settings.rank, settings.alpha, settings.dropout, settings.blocks,
            adapter_name,
        )

    def merge(self, model: nn.Module, adapter_name: str = "default") -> None:
        merge_lora(model, adapter_name)

    def unmerge(self, model: nn.Module, adapter_name: str = "default") -> None:
        unmerge_lora(model, adapter_name)


__all__ = ["LoRA", "LoraSettings"]
