"""Bookkeeping shared by every method whose layers hold adapters keyed by name.

A keyed layer (LoRA, MoRA, MoR) has ``adapter_names`` and ``delete_adapter(name)``; a
call is served by the adapter it routes (:func:`medpeft.routing.route`), else by the
model's first adapter (:func:`check_routed`; a layer on its own: the first added to it). These helpers walk a model's keyed layers, check a
call's routing against them, freeze what does not train and count parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from medpeft.errors import ConfigError
from medpeft.routing import Adapters, adapters_version, current, note_adapters_changed

_NAMES_CACHE = "_medpeft_adapter_names"  # model attribute: (adapters_version(), names)


def keyed_layers(model: nn.Module) -> list[nn.Module]:
    """Layers that hold named adapters (LoRA, MoRA, MoR: ``adapter_names`` + ``delete_adapter``)."""
    return [m for m in model.modules() if hasattr(m, "adapter_names") and hasattr(m, "delete_adapter")]


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters present in a model, in insertion order: those of its adapter
    layers, then tasks that only have a head of their own (per-task heads, e.g. a linear probe).

    Walking every module costs about half a millisecond on a ViT, so the names are cached on
    the model and found again only after some adapter was added or removed
    (:func:`medpeft.routing.note_adapters_changed`).
    """
    cached = model.__dict__.get(_NAMES_CACHE)
    if cached is not None and cached[0] == adapters_version():
        return list(cached[1])
    names: dict[str, None] = {}
    for layer in keyed_layers(model):
        names.update(dict.fromkeys(layer.adapter_names))
    names.update(dict.fromkeys(getattr(getattr(model, "head", None), "heads", {})))
    model.__dict__[_NAMES_CACHE] = (adapters_version(), tuple(names))
    return list(names)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer holding it, and its per-task head."""
    for layer in keyed_layers(model):
        if name in layer.adapter_names:
            layer.delete_adapter(name)
    heads = getattr(model, "head", None)
    if hasattr(heads, "heads") and name in heads.heads:
        del heads.heads[name]
        note_adapters_changed()


def check_routed(model: nn.Module) -> Adapters:
    """The adapters ``model`` serves the call in progress with: the routed ones, else its
    first adapter (None when it holds none). Models enter this routing in their forward,
    so every layer and the head serve one task even where that task adds no layer.

    Raises:
        ConfigError: the call routes to adapters ``model`` does not hold. Layers without
            the routed adapter run their base weights (an adapter need not cover every
            layer), so a misspelt task name must be caught at the model.
    """
    routed = current().adapters
    known = adapter_names(model)
    if routed is None:
        return known[0] if known else None
    unknown = sorted(({routed} if isinstance(routed, str) else set(routed)) - set(known))
    if unknown:
        raise ConfigError(f"no adapter named {unknown}; the model has {known}")
    return routed


def freeze_except(model: nn.Module, trainable: Callable[[str], bool]) -> None:
    """Freeze every parameter whose qualified name does not satisfy ``trainable``."""
    for name, param in model.named_parameters():
        param.requires_grad_(trainable(name))


@dataclass(frozen=True)
class ParameterCount:
    """Trainable vs total parameters of a model."""

    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable / {self.total:,} total ({self.percent:.3f}%)"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Count trainable and total parameters (each shared tensor once)."""
    params = list(model.parameters())  # parameters() already skips repeats of a shared tensor
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
    )
