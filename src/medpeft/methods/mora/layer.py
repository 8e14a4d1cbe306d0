"""Modality-aware LoRA ("MoRA", arXiv 2408.09064) for inputs with missing modalities.

One shared down-projection ``A`` (``dim -> r``, no bias) and one up-projection
``B_m`` per modality (``r -> dim``, no bias, zero init), no scaling. For each
sample the update sums the up-projections of the modalities it has::

    delta = sum_{m present} B_m A x

(two modalities: complete -> ``(B_1 + B_2) A x``, one missing -> the other's
``B`` only). The per-sample sum is one batched op: the presence mask
``[batch, M]`` mixes the stacked ``B`` into one ``[batch, dim, r]`` tensor.

Placements:
    :class:`MoRABlockBranch`: a parallel branch around a whole transformer
    block, ``out = block(x) + delta(x)`` on every token (the public code's
    placement: first block only).
    :class:`MoRALinear`: around a target Linear, ``out = W x + b + delta(x)``.

``A`` is initialised ``normal(std=1/r)``: the public code's
``nn.init.normal_(down.weight, std=1 / rank)``, so the paper's ``N(0, 1/r)``
is read as a standard deviation (variance ``1/r**2``).

The presence mask reaches the layers through the call's routing
(:func:`medpeft.routing.route`), which the fusion models enter in their ``forward``. MoRA is not mergeable in
general (the update depends on the mask); for one fixed presence pattern it
equals a LoRA with ``B = sum_{m present} B_m`` (:meth:`ModalityDelta.delta_weight`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.routing import current, note_adapters_changed


class ModalityDelta(nn.Module):
    """Named MoRA adapters: ``mora_A[name]`` ``(r, in)``, ``mora_B[name]`` ``(M, out, r)``.

    Args:
        in_features: Width of the input ``x``.
        out_features: Width of the update.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.mora_A = nn.ParameterDict()
        self.mora_B = nn.ParameterDict()
        self.modalities: dict[str, tuple[str, ...]] = {}

    def add_adapter(self, name: str, modalities: Sequence[str], rank: int = 4) -> None:
        """Add a fresh adapter: ``A ~ normal(std=1/r)``, every ``B_m`` zero."""
        if rank < 1:
            raise ValueError(f"MoRA rank must be >= 1, got {rank}")
        if name in self.mora_A:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        ref = next(self.parameters())
        a = torch.empty(rank, self.in_features, device=ref.device, dtype=ref.dtype)
        self.mora_A[name] = nn.Parameter(nn.init.normal_(a, std=1.0 / rank))
        shape = (len(modalities), self.out_features, rank)
        self.mora_B[name] = nn.Parameter(torch.zeros(shape, device=ref.device, dtype=ref.dtype))
        self.modalities[name] = tuple(modalities)
        note_adapters_changed()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``."""
        del self.mora_A[name], self.mora_B[name], self.modalities[name]
        note_adapters_changed()

    def _routed(self, x: torch.Tensor) -> tuple[str | None, torch.Tensor]:
        """The adapter and presence mask ``Bool[B, M]`` of the call in progress."""
        routing = current()
        if routing.is_mixed():
            raise ValueError("MoRA serves one adapter per batch; got per-sample adapters")
        name = routing.adapter_for(self.mora_A)
        if name not in self.mora_A:
            return None, routing.presence
        present = routing.presence
        if present is None:
            raise RuntimeError(
                f"{type(self).__name__} ran without a modality presence mask; call the model "
                "inside `with medpeft.routing.route(presence=...)` (the fusion models do so)"
            )
        expected = (x.shape[0], len(self.modalities[name]))
        if tuple(present.shape) != expected:
            raise ValueError(
                f"presence mask of shape {tuple(present.shape)} does not fit batch/modalities "
                f"{expected} ({self.modalities[name]})"
            )
        return name, present

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """``sum_{m present in sample b} B_m A x_b`` for every sample, shape ``(..., out)``;
        None when no adapter of this layer is routed."""
        name, present = self._routed(x)
        if name is None:
            return None
        a, b = self.mora_A[name], self.mora_B[name]
        weights = present.to(device=b.device, dtype=b.dtype)
        up = torch.einsum("bm,mor->bor", weights, b)  # per-sample up-projection
        hidden = F.linear(x, a).reshape(x.shape[0], -1, a.shape[0])
        return torch.bmm(hidden, up.transpose(1, 2).to(hidden.dtype)).reshape(*x.shape[:-1], -1)

    def delta_weight(self, name: str, pattern: Sequence[bool]) -> torch.Tensor:
        """The LoRA-equivalent ``(sum_{m in pattern} B_m) A`` of one presence pattern."""
        b = self.mora_B[name]
        weights = torch.as_tensor(pattern, dtype=b.dtype, device=b.device)
        return torch.einsum("m,mor->or", weights, b) @ self.mora_A[name]

    @property
    def adapter_names(self) -> list[str]:
        return list(self.mora_A)

    def rank(self, name: str) -> int:
        return self.mora_A[name].shape[0]

    def extra_repr(self) -> str:
        adapters = {n: (self.rank(n), self.modalities[n]) for n in self.mora_A}
        return f"adapters={adapters}"


class MoRALinear(ModalityDelta):
    """A frozen Linear plus a modality-aware update: ``W x + b + delta(x)``."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__(base.in_features, base.out_features)
        self.base = base
        base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        delta = self.delta(x)
        return out if delta is None else out + delta.to(out.dtype)


class MoRABlockBranch(ModalityDelta):
    """A frozen transformer block plus a parallel branch: ``block(x) + delta(x)``.

    The block's extra arguments (e.g. an attention mask) pass through. A tuple
    output (Hugging Face layers) gets the update on its first element. The block's
    attributes read through (``attn``, ``mlp``...), so the backbone's family view
    (:func:`medpeft.backbones.base.describe`) still reads a model with branches.
    """

    def __init__(self, base: nn.Module, dim: int) -> None:
        super().__init__(dim, dim)
        self.base = base
        base.requires_grad_(False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # the branch's own parameters and modules
        except AttributeError:
            base = self.__dict__.get("_modules", {}).get("base")
            if base is None:
                raise
            return getattr(base, name)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        delta = self.delta(x)
        if delta is None:
            return out
        hidden = out[0] if isinstance(out, tuple) else out
        hidden = hidden + delta.to(hidden.dtype)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden
