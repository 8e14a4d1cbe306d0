"""LoRA layer for ViT diagnosis ("MeLo", arXiv 2311.08236).

A :class:`LoRALinear` wraps a frozen ``nn.Linear`` and adds, per adapter name,
a low-rank update ``scale * B @ A`` to some output *segments* of the layer.
For timm's fused ``attn.qkv`` (dim -> 3*dim) the MeLo default adapts the query
segment ``[0:dim]`` and the value segment ``[2*dim:3*dim]`` with independent
rank-r pairs and leaves the key untouched; for any other Linear the single
segment is the whole output.

Weights are stored per adapter name (``lora_A[name]`` of shape
``(segments, r, in)``, ``lora_B[name]`` of shape ``(segments, seg_out, r)``), so
several task adapters can live on one frozen backbone and be switched,
merged, saved or deleted by name.

Which adapter a call uses comes from :func:`medpeft.routing.current` (the call's
routing), else from the layer's default ``active_adapter``. A batch routed to
different adapters per sample computes all its deltas at once: each sample's
``A`` and dense ``B`` are gathered (zero-padded to the largest rank, which leaves
the product unchanged) and applied with two batched matmuls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.adapters.wrapped import WrappedLinear
from medpeft.routing import current

Segment = tuple[int, int]


class LoRALinear(WrappedLinear):
    """A frozen Linear plus named low-rank updates on chosen output segments.

    Args:
        base: The Linear to adapt; its weights are frozen and kept as they are.
        segments: ``(start, stop)`` output ranges that receive an update, all of
            equal length. ``None`` means the whole output.
    """

    def __init__(self, base: nn.Linear, segments: Sequence[Segment] | None = None) -> None:
        super().__init__(base)
        self.segments: list[Segment] = list(segments or [(0, base.out_features)])
        lengths = {stop - start for start, stop in self.segments}
        inside = all(0 <= start < stop <= base.out_features for start, stop in self.segments)
        if len(lengths) != 1 or not inside:
            raise ValueError(
                f"segments {self.segments} must be non-empty, of equal length and within "
                f"0..{base.out_features} (the Linear's outputs)"
            )
        self.segment_size = lengths.pop()
        index = torch.cat([torch.arange(start, stop) for start, stop in self.segments])
        self.register_buffer("segment_index", index, persistent=False)
        self.covers_all = self.segments == [(0, base.out_features)]
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapters: list[str] = []

    def add_adapter(self, name: str, rank: int = 4, alpha: float = 4.0, dropout: float = 0.0) -> None:
        """Add a fresh adapter: A kaiming-uniform(a=sqrt 5), B zeros, scale = alpha / rank."""
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        if name in self.lora_A:
            raise ValueError(f"adapter {name!r} already exists on this layer")
        n_seg = len(self.segments)
        ref = self.base.weight
        a = torch.empty(n_seg, rank, self.in_features, device=ref.device, dtype=ref.dtype)
        for part in a:
            nn.init.kaiming_uniform_(part, a=math.sqrt(5))
        self.lora_A[name] = nn.Parameter(a)
        self.lora_B[name] = nn.Parameter(
            torch.zeros(n_seg, self.segment_size, rank, device=ref.device, dtype=ref.dtype)
        )
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling[name] = alpha / rank  # real division: MeLo's `alpha // r` floors to 0
        if self.active_adapter is None:
            self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter (unmerging it first if it is merged)."""
        if name in self.merged_adapters:
            self.unmerge(name)
        del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        del self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = next(iter(self.lora_A.keys()), None)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_A)

    def rank(self, name: str) -> int:
        return self.lora_A[name].shape[1]

    def scaled_hidden(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``scale * A x`` for all segments at once, shape ``(..., S*r)``."""
        a = self.lora_A[name].flatten(0, 1)
        return F.linear(self.lora_dropout[name](x), a) * self.scaling[name]

    def dense_B(self, name: str) -> torch.Tensor:
        """All segments' B as one ``(out, S*r)`` matrix, zero outside the segments.

        Segment ``s`` fills its output rows and columns ``[s*r:(s+1)*r]`` (PEFT's layout).
        """
        b = self.lora_B[name]
        if self.covers_all:
            return b[0]
        blocks = torch.block_diag(*b)  # (S*seg, S*r)
        dense = blocks.new_zeros(self.out_features, blocks.shape[1])
        return dense.index_copy(0, self.segment_index, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        routing = current()
        if routing.is_mixed():
            return out + self.mixed_delta(x, routing.adapters).to(out.dtype)
        name = routing.batch_adapter() or self.active_adapter
        if name not in self.lora_A or name in self.merged_adapters:
            return out
        # One matmul with the dense B over the full output: no scatter of segment deltas.
        return out + F.linear(self.scaled_hidden(x, name), self.dense_B(name))

    def mixed_delta(self, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """Each sample's update by its own adapter, ``(B, ..., out)``; zero for adapters
        this layer does not hold. Inference path: dropout is not applied."""
        if self.merged_adapters:
            raise RuntimeError(
                f"per-sample adapters need unmerged weights; {self.merged_adapters} are merged"
            )
        if len(names) != x.shape[0]:
            raise ValueError(f"{len(names)} adapter names for a batch of {x.shape[0]}")
        used = list(dict.fromkeys(n for n in names if n in self.lora_A))
        width = max((self.rank(n) for n in used), default=0) * len(self.segments)
        a_rows = x.new_zeros(len(used) + 1, width, self.in_features)  # last row: no adapter
        b_cols = x.new_zeros(len(used) + 1, self.out_features, width)
        for i, name in enumerate(used):
            a = self.lora_A[name].flatten(0, 1) * self.scaling[name]
            a_rows[i, : a.shape[0]] = a
            b_cols[i, :, : a.shape[0]] = self.dense_B(name)
        slot = {name: i for i, name in enumerate(used)}
        index = torch.tensor([slot.get(n, len(used)) for n in names], device=x.device)
        tokens = x.reshape(x.shape[0], -1, self.in_features)
        hidden = torch.bmm(tokens, a_rows[index].transpose(1, 2))
        delta = torch.bmm(hidden, b_cols[index].transpose(1, 2))
        return delta.reshape(*x.shape[:-1], self.out_features)

    def delta_weight(self, name: str) -> torch.Tensor:
        """``scale * B @ A`` for every segment, shape ``(S*seg, in)``."""
        a, b = self.lora_A[name], self.lora_B[name]
        return torch.einsum("sor,sri->soi", b, a).flatten(0, 1) * self.scaling[name]

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold an adapter into the base weight (inference: zero extra cost)."""
        name = name or self.active_adapter
        if name is None or name in self.merged_adapters:
            return
        w = self.base.weight
        w.index_add_(0, self.segment_index, self.delta_weight(name).to(w.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str | None = None) -> None:
        """Undo :meth:`merge`."""
        name = name or self.active_adapter
        if name not in self.merged_adapters:
            return
        w = self.base.weight
        w.index_add_(0, self.segment_index, -self.delta_weight(name).to(w.dtype))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        ranks = {n: self.rank(n) for n in self.lora_A}
        return f"segments={self.segments}, adapters={ranks}, active={self.active_adapter!r}"
