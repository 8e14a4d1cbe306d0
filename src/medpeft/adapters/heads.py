"""Per-task classification heads: one frozen backbone, one head per adapter.

When a second adapter joins a model, ``model.head`` becomes a :class:`TaskHeads`
keyed by adapter name. :func:`medpeft.adapters.inject.set_active_adapter` calls
its ``activate`` method, so LoRA layers and head always switch together.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medpeft.backbones.timm_vit import HEAD_NAME
from medpeft.errors import ConfigError


class TaskHeads(nn.Module):
    """One classification head per adapter name; the active one classifies.

    Replaces ``model.head`` once a second adapter joins a model. Parameter names
    stay under ``head.`` (``head.heads.<name>.weight``), so heads keep training.
    """

    def __init__(self, heads: Mapping[str, nn.Module], active: str) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(dict(heads))
        self.active = active

    def activate(self, name: str) -> None:
        """Classify with the head of adapter ``name``."""
        if name not in self.heads:
            raise KeyError(f"no head for adapter {name!r}; known: {list(self.heads)}")
        self.active = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads[self.active](x)


def head_of(model: nn.Module, adapter_name: str) -> nn.Module:
    """The classification head that belongs to ``adapter_name``."""
    head = model.get_submodule(HEAD_NAME)
    if not isinstance(head, TaskHeads):
        return head
    if adapter_name not in head.heads:
        raise ConfigError(f"no head for adapter {adapter_name!r}; known: {list(head.heads)}")
    return head.heads[adapter_name]
