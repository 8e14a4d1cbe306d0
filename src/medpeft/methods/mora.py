"""Modality-aware LoRA ("MoRA", arXiv 2408.09064) as a tuning method.

Defaults: rank 4, a parallel branch around block 0, one up-projection per modality
of the model (:class:`medpeft.adapters.mora.ModalityDelta`). Not mergeable: the
update depends on each sample's presence mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from medpeft.adapters.mora import add_mora
from medpeft.methods.base import Method, check_blocks, is_int, require


@dataclass
class MoraSettings:
    """MoRA hyper-parameters (paper: rank 4, a branch around block 0)."""

    rank: int = 4
    blocks: Sequence[int] | None = (0,)
    targets: Sequence[str] | None = None

    def __post_init__(self) -> None:
        self.blocks = None if self.blocks is None else tuple(self.blocks)
        self.targets = None if self.targets is None else tuple(self.targets)
        require(is_int(self.rank) and self.rank >= 1, "mora.rank", "an integer >= 1", self.rank)
        check_blocks("mora.blocks", self.blocks)


class MoRA(Method):
    """Shared down-projection, per-modality up-projections chosen per sample."""

    name = "mora"
    settings_type = MoraSettings
    markers = (".mora_",)
    adapter_dicts = ("mora_A", "mora_B")

    def attach(self, model: nn.Module, settings: MoraSettings, adapter_name: str = "default") -> None:
        add_mora(
            model, model.modalities, settings.rank, settings.blocks, settings.targets, adapter_name
        )
