"""DoRA (Weight-Decomposed Low-Rank Adaptation, Liu et al., arXiv 2402.09353) as a tuning method.

A drop-in for LoRA (``method: dora``, a ``dora:`` section with LoRA's fields and
defaults: q and v of every block, r=4, alpha=4): each adapted output row gets a
learned magnitude on top of LoRA's low-rank direction update. The layer is
:class:`medpeft.methods.dora.layer.DoraLinear`, attached by
:mod:`medpeft.methods.dora.attach`. Mergeable; one adapter per batch (not mixable).
"""

from __future__ import annotations

from torch import nn

from medpeft.methods.base import Method
from medpeft.methods.dora.attach import add_dora
from medpeft.methods.dora.settings import DoraSettings
from medpeft.methods.lora.attach import merge_lora, unmerge_lora


class DoRA(Method):
    """LoRA's low-rank direction update plus a learned magnitude per output row; mergeable."""

    name = "dora"
    settings_type = DoraSettings
    markers = (".lora_",)
    adapter_dicts = ("lora_A", "lora_B", "lora_magnitude")
    mergeable = True

    def attach(self, model: nn.Module, settings: DoraSettings, adapter_name: str = "default") -> None:
        aliases = getattr(model, "target_aliases", {})
        targets = [aliases.get(t, t) for t in settings.targets]
        add_dora(
            model, targets, settings.rank, settings.alpha, settings.dropout, settings.blocks,
            adapter_name,
        )

    def merge(self, model: nn.Module, adapter_name: str = "default") -> None:
        merge_lora(model, adapter_name)

    def unmerge(self, model: nn.Module, adapter_name: str = "default") -> None:
        unmerge_lora(model, adapter_name)


__all__ = ["DoRA", "DoraSettings"]
