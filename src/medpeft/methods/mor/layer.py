"""Mixture of low-varied Ranks (MoR) adapter ("EI", arXiv 2603.17514).

A :class:`MoRLinear` wraps a frozen ``nn.Linear`` and adds, per adapter name, ``K``
LoRA experts of different ranks (default ``[2, 4, 8]``, ``alpha_k = 2 r_k`` so every
scale ``s_k = alpha_k / r_k = 2``) mixed per token by a router ``Linear(in -> K+1)``
with bias and a softmax. Column 0 of the router is a bypass whose weight is dropped
(the "weight-relaxed" router)::

    w = softmax(R x + c)                                  # (K+1,) per token
    y = W x + b + sum_{k=1..K} w_k * s_k * B_k A_k x      # sum_k w_k = 1 - w_0 <= 1

No balancing loss. The update depends on the input, so it cannot be merged into ``W``.

All experts run as one low-rank matmul pair. With ``R = sum_k r_k``::

    A_cat = [A_1; ...; A_K]              (R, in)     mor_A[name]
    B_cat = [B_1, ..., B_K]              (out, R)    mor_B[name]
    g     = repeat_interleave(w[1:], r) * s          (..., R)
    delta = B_cat ((A_cat x) * g)

which equals the per-expert sum because column ``j`` of ``B_cat`` and row ``j`` of
``A_cat`` belong to one expert. ``A`` is kaiming-uniform(a=sqrt 5) (its bound
depends only on ``in``, so drawing the stacked matrix at once gives every expert
the per-expert distribution), ``B`` is zero, the router has ``nn.Linear``'s
default initialisation (the public code's). Weights are stored per adapter name
(``mor_A``, ``mor_B``, ``mor_router_weight`` ``(K+1, in)``, ``mor_router_bias``
``(K+1,)``), the adapter in use comes from :func:`medpeft.routing.current`.

Per-modality experts (``modalities=...``, MoRA's idea on MoR): the down-projections
and the router stay shared, the up-projections are one set per modality,
``mor_B[name]`` ``(M, out, R)``, and each sample sums those of the modalities it has::

    delta_b = sum_{m present in sample b} B_cat_m ((A_cat x) * g)

with the presence mask of the call (:func:`medpeft.routing.current`; none routed:
every modality). In one token stream every token of a sample gets the same sum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.methods.wrapped import WrappedLinear
from medpeft.routing import current, note_adapters_changed

DEFAULT_RANKS = (2, 4, 8)
DEFAULT_SCALE = 2.0  # alpha_k = 2 r_k


class MoRLinear(WrappedLinear):
    """A frozen Linear plus named MoR adapters (rank-varied LoRA experts + a per-token router).

    Args:
        base: The Linear to adapt; its weights are frozen and kept as they are.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__(base)
        self.mor_A = nn.ParameterDict()
        self.mor_B = nn.ParameterDict()
        self.mor_router_weight = nn.ParameterDict()
        self.mor_router_bias = nn.ParameterDict()
        self.ranks: dict[str, tuple[int, ...]] = {}
        self.scaling: dict[str, float] = {}
        self.modalities: dict[str, tuple[str, ...]] = {}  # adapters with per-modality experts
        self._expert_of_column: dict[tuple[str, torch.device], torch.Tensor] = {}

    @property
    def adapter_names(self) -> list[str]:
        return list(self.mor_A)

    def add_adapter(
        self,
        name: str,
        ranks: Sequence[int] = DEFAULT_RANKS,
        scale: float = DEFAULT_SCALE,
        modalities: Sequence[str] | None = None,
    ) -> None:
        """Add a fresh adapter: experts of ``ranks`` (A kaiming, B zero), a router Linear(in -> K+1).

        Args:
            name: Key of the adapter's weights.
            ranks: Rank of each expert (``K = len(ranks)``).
            scale: ``alpha_k / r_k`` of every expert (paper: ``alpha = 2r``, so 2).
            modalities: One set of up-projections per modality, chosen per sample by
                the routed presence mask (None: one set for every sample).
        """
        ranks = tuple(ranks)
        if not ranks or any(r < 1 for r in ranks):
            raise ValueError(f"MoR ranks must be a non-empty list of integers >= 1, got {ranks}")
        if name in self.mor_A:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        ref = self.base.weight
        kw = dict(device=ref.device, dtype=ref.dtype)
        a = torch.empty(sum(ranks), self.in_features, **kw)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        router_w = torch.empty(len(ranks) + 1, self.in_features, **kw)
        nn.init.kaiming_uniform_(router_w, a=math.sqrt(5))  # nn.Linear's default
        bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        router_b = torch.empty(len(ranks) + 1, **kw)
        nn.init.uniform_(router_b, -bound, bound)
        self.mor_A[name] = nn.Parameter(a)
        sets = () if modalities is None else (len(modalities),)
        self.mor_B[name] = nn.Parameter(torch.zeros(*sets, self.out_features, sum(ranks), **kw))
        if modalities is not None:
            self.modalities[name] = tuple(modalities)
        self.mor_router_weight[name] = nn.Parameter(router_w)
        self.mor_router_bias[name] = nn.Parameter(router_b)
        self.ranks[name] = ranks
        self.scaling[name] = float(scale)
        note_adapters_changed()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``."""
        del self.mor_A[name], self.mor_B[name]
        del self.mor_router_weight[name], self.mor_router_bias[name]
        del self.ranks[name], self.scaling[name]
        self.modalities.pop(name, None)
        self._expert_of_column = {k: v for k, v in self._expert_of_column.items() if k[0] != name}
        note_adapters_changed()

    def routing_weights(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Softmax router output per token, ``(..., K+1)``; column 0 is the bypass."""
        logits = F.linear(x, self.mor_router_weight[name], self.mor_router_bias[name])
        return logits.softmax(dim=-1)

    def expert_weights(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The experts' weights ``w_1..w_K`` per token, ``(..., K)``: the bypass column dropped,
        so they sum to ``1 - w_0``."""
        return self.routing_weights(x, name)[..., 1:]

    def _column_experts(self, name: str, device: torch.device) -> torch.Tensor:
        """How many columns each expert owns (``ranks``), as a tensor on ``device`` (cached)."""
        key = (name, device)
        if key not in self._expert_of_column:
            self._expert_of_column[key] = torch.tensor(self.ranks[name], device=device)
        return self._expert_of_column[key]

    def delta(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``sum_k w_k s_k B_k A_k x`` as one matmul pair, shape ``(..., out)``."""
        a, b = self.mor_A[name], self.mor_B[name]
        x = x.to(a.dtype)
        gate = self.expert_weights(x, name)  # (..., K)
        columns = torch.repeat_interleave(
            gate, self._column_experts(name, gate.device), dim=-1, output_size=a.shape[0]
        )  # (..., R): each expert's weight over its rank columns
        hidden = F.linear(x, a) * (columns * self.scaling[name])
        if name not in self.modalities:
            return F.linear(hidden, b)
        up = torch.einsum("bm,mor->bor", self._presence(x, name).to(b.dtype), b)  # per-sample B
        flat = hidden.reshape(x.shape[0], -1, hidden.shape[-1])
        return torch.bmm(flat, up.transpose(1, 2)).reshape(*x.shape[:-1], -1)

    def _presence(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The routed presence mask ``[B, M]`` (every modality when none is routed)."""
        present = current().presence
        count = len(self.modalities[name])
        if present is None:
            return torch.ones(x.shape[0], count, device=x.device)
        if tuple(present.shape) != (x.shape[0], count):
            raise ValueError(
                f"presence mask of shape {tuple(present.shape)} does not fit batch/modalities "
                f"{(x.shape[0], count)} ({self.modalities[name]})"
            )
        return present.to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        routing = current()
        if routing.is_mixed():
            raise ValueError(
                "MoR serves one adapter per batch; got per-sample adapters "
                f"{sorted(set(routing.adapters))}: split the batch by adapter"
            )
        name = routing.adapter_for(self.mor_A)
        if name not in self.mor_A:
            return out
        return out + self.delta(x, name).to(out.dtype)

    def num_adapter_parameters(self, name: str) -> int:
        """Parameters of adapter ``name`` on this layer (experts + router)."""
        dicts = (self.mor_A, self.mor_B, self.mor_router_weight, self.mor_router_bias)
        return sum(d[name].numel() for d in dicts)

    def extra_repr(self) -> str:
        adapters = {n: self.ranks[n] for n in self.mor_A}
        return f"adapters={adapters}"
