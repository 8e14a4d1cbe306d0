"""Modality-aware LoRA ("MoRA", arXiv 2408.09064) as a tuning method.

Defaults: rank 4, a parallel branch around block 0, one up-projection per modality
of the model (:class:`medpeft.methods.mora.layer.ModalityDelta`, attached by
:mod:`medpeft.methods.mora.attach`). Not mergeable: the update depends on each
sample's presence mask.
"""

from __future__ import annotations

from torch import nn

from medpeft.methods.base import Method
from medpeft.methods.mora.attach import add_mora
from medpeft.methods.mora.settings import MoraSettings


class MoRA(Method):
    """Shared down-projection, per-modality up-projections chosen per sample."""

    name = "mora"
    settings_type = MoraSettings
    markers = (".mora_",)
    adapter_dicts = ("mora_A", "mora_B")
    needs_tokens = True
    per_modality = True

    def attach(self, model: nn.Module, settings: MoraSettings, adapter_name: str = "default") -> None:
        add_mora(
            model, model.modalities, settings.rank, settings.blocks, settings.targets, adapter_name
        )


__all__ = ["MoRA", "MoraSettings"]
