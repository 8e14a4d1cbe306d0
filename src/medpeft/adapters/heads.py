"""Per-task classification heads: one frozen backbone, one head per adapter.

When a second adapter joins a model, ``model.head`` becomes a :class:`TaskHeads`
keyed by adapter name. The head of a call is the routed adapter's
(:mod:`medpeft.routing`), else the default set by
:func:`medpeft.adapters.inject.set_active_adapter`, so LoRA layers and head
always switch together.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from medpeft.backbones.timm_vit import HEAD_NAME
from medpeft.errors import ConfigError
from medpeft.routing import current

HEADS_DICT = "heads"  # TaskHeads' ModuleDict: parameters are head.heads.<adapter>.*


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
        routing = current()
        if routing.is_mixed():
            return self.mixed_forward(x, routing.adapters)
        name = routing.batch_adapter() or self.active
        if name not in self.heads:
            raise KeyError(f"no head for adapter {name!r}; known: {list(self.heads)}")
        return self.heads[name](x)

    def mixed_forward(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        """Logits of each sample by its own task's head (heads of equal width)."""
        unknown = sorted(set(names) - set(self.heads))
        widths = {self.heads[n].out_features for n in set(names) - set(unknown)}
        if unknown or len(widths) != 1:
            raise ValueError(
                f"per-sample heads need known tasks of one width; unknown {unknown}, widths {widths}"
            )
        out = x.new_empty(x.shape[0], widths.pop())
        for name in dict.fromkeys(names):
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=x.device)
            out[rows] = self.heads[name](x[rows]).to(out.dtype)
        return out


def head_of(model: nn.Module, adapter_name: str) -> nn.Module:
    """The classification head that belongs to ``adapter_name``."""
    head = model.get_submodule(HEAD_NAME)
    if not isinstance(head, TaskHeads):
        return head
    if adapter_name not in head.heads:
        raise ConfigError(f"no head for adapter {adapter_name!r}; known: {list(head.heads)}")
    return head.heads[adapter_name]
