"""Mixture of low-varied Ranks ("MoR", from "EI", arXiv 2603.17514) as a tuning method.

Defaults: ``mlp.fc1`` and ``mlp.fc2`` of every block, three LoRA experts of ranks
2, 4, 8 with ``alpha = 2r`` (scale 2), mixed per token by a weight-relaxed router::

    w = softmax(R x + c)    (K+1 columns; column 0 = bypass, dropped)
    y = W x + b + sum_k w_k * 2 * B_k A_k x

The layer is :class:`medpeft.methods.mor.layer.MoRLinear`, attached by
:mod:`medpeft.methods.mor.attach`. Not mergeable: the update depends on the input
through the router. ViT-B: 122,888 parameters per block, 1,474,656 per backbone.

``per_modality: true`` gives several image modalities in one token stream
(``model.fusion: auto``) MoRA-style routing: shared down-projections and router,
one set of up-projections per modality, summed over the modalities each sample has.
"""

from __future__ import annotations

from torch import nn

from medpeft.errors import ConfigError
from medpeft.methods.base import Method
from medpeft.methods.mor.attach import add_mor
from medpeft.methods.mor.settings import MorSettings


class MoR(Method):
    """Rank-varied LoRA experts mixed per token by a router with a bypass; not mergeable."""

    name = "mor"
    settings_type = MorSettings
    markers = (".mor_",)
    adapter_dicts = ("mor_A", "mor_B", "mor_router_weight", "mor_router_bias")

    def attach(self, model: nn.Module, settings: MorSettings, adapter_name: str = "default") -> None:
        aliases = getattr(model, "target_aliases", {})
        targets = [aliases.get(t, t) for t in settings.targets]
        modalities = per_modality(model) if settings.per_modality else None
        add_mor(model, targets, settings.ranks, settings.blocks, adapter_name, modalities=modalities)


def per_modality(model: nn.Module) -> tuple[str, ...]:
    """The modalities of a one-stream model with several of them (``mor.per_modality``)."""
    modalities = tuple(getattr(model, "modalities", ()))
    one_stream = not any(hasattr(model, copies) for copies in ("targets", "encoders"))
    if len(modalities) < 2 or not one_stream:
        raise ConfigError(
            "mor.per_modality: needs several modalities in one token stream (model.fusion: auto); "
            f"{type(model).__name__} has {list(modalities)}"
        )
    return modalities


__all__ = ["MoR", "MorSettings"]
