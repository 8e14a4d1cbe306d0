"""Per-task classification heads: one frozen backbone, one head per adapter.

When a second adapter joins a model, ``model.head`` becomes a :class:`TaskHeads`
keyed by adapter name. The head of a call is the routed adapter's
(:mod:`medpeft.routing`), else the first head added, the same rule as the adapter
layers', so layers and head always switch together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from medpeft.errors import ConfigError
from medpeft.routing import current, note_adapters_changed

HEAD_NAME = "head"  # the classifier attribute of every model (timm's name)
HEADS_DICT = "heads"  # TaskHeads' ModuleDict: parameters are head.heads.<adapter>.*


class TaskHeads(nn.Module):
    """One classification head per adapter name; the routed one (else the first) classifies.

    Replaces ``model.head`` once a second adapter joins a model. Parameter names
    stay under ``head.`` (``head.heads.<name>.weight``), so heads keep training.
    """

    def __init__(self, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(dict(heads))
        note_adapters_changed()

    def add_head(self, name: str, head: nn.Module) -> None:
        """Give adapter ``name`` its own head."""
        self.heads[name] = head
        note_adapters_changed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = current()
        if routing.is_mixed():
            return self.mixed_forward(x, routing.adapters)
        name = routing.adapter_for(self.heads)
        if name not in self.heads:
            raise KeyError(f"no head for adapter {name!r}; known: {list(self.heads)}")
        return self.heads[name](x)

    def mixed_forward(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        """Logits of each sample by its own task's head (heads of equal width)."""
        logits, widths = self.padded_logits(x, names)
        if len(set(widths)) != 1:
            raise ValueError(
                f"per-sample heads in one logits tensor need one width, got {sorted(set(widths))}; "
                "use padded_logits"
            )
        return logits

    def padded_logits(self, x: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, list[int]]:
        """Each sample's logits by its own task's head, in one batched product.

        Heads of different widths are zero-padded to the widest; returns the
        ``(B, widest)`` logits and each sample's own width.
        """
        unknown = sorted(set(names) - set(self.heads))
        if unknown:
            raise KeyError(f"no head for adapters {unknown}; known: {list(self.heads)}")
        used = list(dict.fromkeys(names))
        heads = [self._linear(self.heads[n]) for n in used]
        widest = max(h.out_features for h in heads)
        weight = x.new_zeros(len(used), widest, x.shape[-1])
        bias = x.new_zeros(len(used), widest)
        for i, head in enumerate(heads):
            weight[i, : head.out_features] = head.weight
            if head.bias is not None:
                bias[i, : head.out_features] = head.bias
        slot = {name: i for i, name in enumerate(used)}
        index = torch.tensor([slot[n] for n in names], device=x.device)
        logits = torch.bmm(weight[index], x.unsqueeze(-1)).squeeze(-1) + bias[index]
        return logits, [heads[slot[n]].out_features for n in names]

    @staticmethod
    def _linear(head: nn.Module) -> nn.Linear:
        if not isinstance(head, nn.Linear):
            raise TypeError(f"per-sample heads must be nn.Linear, got {type(head).__name__}")
        return head


def head_of(model: nn.Module, adapter_name: str) -> nn.Module:
    """The classification head that belongs to ``adapter_name``."""
    head = model.get_submodule(HEAD_NAME)
    if not isinstance(head, TaskHeads):
        return head
    if adapter_name not in head.heads:
        raise ConfigError(f"no head for adapter {adapter_name!r}; known: {list(head.heads)}")
    return head.heads[adapter_name]
