"""LoRA for ViT diagnosis ("MeLo", arXiv 2311.08236) as a tuning method.

Defaults: q and v of every block's fused ``attn.qkv``, r=4, alpha=4 (scale 1).
The layer is :class:`medpeft.adapters.lora.LoRALinear`; on ViLT the names ``q``,
``k``, ``v`` mean ``attention.query``/``key``/``value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from medpeft.adapters.inject import add_lora, merge_lora, unmerge_lora
from medpeft.methods.base import Method, check_blocks, is_int, is_number, require


@dataclass
class LoraSettings:
    """LoRA hyper-parameters (MeLo defaults: q and v, r=4, alpha=4)."""

    targets: Sequence[str] = ("q", "v")
    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    blocks: Sequence[int] | None = None

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        self.blocks = None if self.blocks is None else tuple(self.blocks)
        require(bool(self.targets), "lora.targets", "at least one target name", self.targets)
        require(is_int(self.rank) and self.rank >= 1, "lora.rank", "an integer >= 1", self.rank)
        require(is_number(self.alpha) and self.alpha > 0, "lora.alpha", "a number > 0", self.alpha)
        self.alpha = float(self.alpha)
        ok = is_number(self.dropout) and 0 <= self.dropout < 1
        require(ok, "lora.dropout", "a number in [0, 1)", self.dropout)
        check_blocks("lora.blocks", self.blocks)


class LoRA(Method):
    """Low-rank updates on chosen Linears; mergeable."""

    name = "lora"
    settings_type = LoraSettings
    markers = (".lora_",)
    adapter_dicts = ("lora_A", "lora_B")
    mergeable = True

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
