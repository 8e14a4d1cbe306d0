"""The frozen Linear that LoRA and MoR layers wrap, and what it still exposes."""

from __future__ import annotations

import torch
from torch import nn


class WrappedLinear(nn.Module):
    """Keeps a frozen ``nn.Linear`` as ``base``; subclasses add named adapters around it.

    ``in_features``, ``out_features``, ``weight`` and ``bias`` read through to the base,
    so code that inspects the layer keeps working.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        base.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias
