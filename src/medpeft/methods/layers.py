"""Bookkeeping shared by every method whose layers hold adapters keyed by name.

A keyed layer (LoRA, MoRA, MoR) has ``adapter_names`` and ``delete_adapter(name)``;
these helpers walk a model's keyed layers, check a call's routing
(:mod:`medpeft.routing`) against them, freeze what does not train and count parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from medpeft.errors import ConfigError
from medpeft.routing import current


def keyed_layers(model: nn.Module) -> list[nn.Module]:
    """Layers that hold named adapters (LoRA, MoRA: ``adapter_names`` + ``active_adapter``)."""
    return [m for m in model.modules() if hasattr(m, "adapter_names") and hasattr(m, "active_adapter")]


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` every layer's default (``None``: base model only).

    The default serves calls that do not route an adapter (:mod:`medpeft.routing`).
    A per-task head (:class:`medpeft.adapters.heads.TaskHeads`) switches as well.
    """
    layers = keyed_layers(model)  # one walk over the modules
    holds = [name is not None and name in layer.adapter_names for layer in layers]
    if name is not None and not any(holds):
        raise KeyError(f"no adapter named {name!r}; known: {adapter_names(model)}")
    head = getattr(model, "head", None)
    if name is not None and hasattr(head, "activate"):
        head.activate(name)
    for layer, held in zip(layers, holds):
        layer.active_adapter = name if held else None


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the adapters present in a model, in insertion order."""
    names: dict[str, None] = {}
    for layer in keyed_layers(model):
        names.update(dict.fromkeys(layer.adapter_names))
    return list(names)


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer holding it, and its per-task head."""
    for layer in keyed_layers(model):
        if name in layer.adapter_names:
            layer.delete_adapter(name)
    heads = getattr(model, "head", None)
    if hasattr(heads, "heads") and name in heads.heads:
        del heads.heads[name]
        if heads.active == name:
            heads.active = next(iter(heads.heads))


def check_routed(model: nn.Module) -> None:
    """Raise ConfigError if the call in progress routes to adapters ``model`` does not hold.

    Layers without the routed adapter run their base weights (an adapter need not
    cover every layer), so a misspelt task name must be caught at the model.
    """
    routed = current().adapters
    if routed is None:
        return
    known = adapter_names(model)
    unknown = sorted(({routed} if isinstance(routed, str) else set(routed)) - set(known))
    if unknown:
        raise ConfigError(f"no adapter named {unknown}; the model has {known}")


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
