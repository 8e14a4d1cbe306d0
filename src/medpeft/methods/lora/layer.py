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
routing), else it is the first adapter added to the layer. A batch routed to
different adapters per sample computes all its deltas at once: each sample's
``A`` and dense ``B`` are gathered (zero-padded to the largest rank, which leaves
the product unchanged) from stacks cached per layer, and applied with two
batched matmuls.

Inference with one adapter for the whole batch (eval mode, no gradients) runs the
frozen Linear on a cached merged weight ``W + scale * B @ A`` (DoRA's own ``W'``)
instead: one matmul, the base model's cost. The cache holds one weight per layer (a
copy of the frozen weight, for the adapter routed last) and is dropped when the layer
goes back to training; a change to the adapter or the base weight, or another routed adapter,
rebuilds it. Results depend only on the weights and the routing, not on earlier calls.
:attr:`LoRALinear.cache_merged` turns it off (the adapter bank does: its tasks alternate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpeft.methods.wrapped import WrappedLinear
from medpeft.routing import current, note_adapters_changed

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
        self.merged_adapters: list[str] = []
        self._stack_cache: tuple | None = None  # (key, slots, A^T stack, B^T stack)
        self.cache_merged = True  # serve single-adapter inference from a merged weight (merged_for)
        self._merged_cache: tuple | None = None  # (key, merged weight)

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
        self._forget_caches()

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter (unmerging it first if it is merged)."""
        if name in self.merged_adapters:
            self.unmerge(name)
        del self.lora_A[name], self.lora_B[name], self.lora_dropout[name]
        del self.scaling[name]
        self._forget_caches()

    def _forget_caches(self) -> None:
        """Drop the stacked and merged weights after an adapter was added or removed."""
        self._stack_cache = None
        self._merged_cache = None
        note_adapters_changed()

    def train(self, mode: bool = True) -> LoRALinear:
        """Set training mode; going back to training frees the merged weight (see :meth:`merged_for`)."""
        if mode:
            self._merged_cache = None
        return super().train(mode)

    def set_cache_merged(self, enabled: bool) -> None:
        """Turn the merged weight of :meth:`merged_for` on or off (off: frees it)."""
        self.cache_merged = enabled
        if not enabled:
            self._merged_cache = None

    def adapter_or_first(self, name: str | None) -> str | None:
        """``name``, or the first adapter added to the layer (None: no adapter)."""
        return name or next(iter(self.lora_A), None)

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
        routing = current()
        if routing.is_mixed():
            return self.add_mixed_delta(self.base(x), x, routing.adapters)
        name = routing.adapter_for(self.lora_A)
        if name not in self.lora_A or name in self.merged_adapters:
            return self.base(x)
        merged = self.merged_for(name, x)
        if merged is not None:
            return F.linear(x, merged, self.base.bias)
        return self.unmerged_forward(x, name)

    def unmerged_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The layer's output with adapter ``name`` applied as ``W x + b + scale * B A x``."""
        out = self.base(x)
        # One matmul with the dense B over the full output, added in place (no scatter,
        # no delta-sized temporary: the output is read and written once).
        hidden = self.scaled_hidden(x, name).to(out.dtype)
        if torch.compiler.is_compiling():  # dynamo cannot trace the in-place add after a graph break
            return out + F.linear(hidden, self.dense_B(name).to(out.dtype))
        flat = out.view(-1, self.out_features)
        flat.addmm_(hidden.reshape(-1, hidden.shape[-1]), self.dense_B(name).to(out.dtype).T)
        return out

    def add_mixed_delta(self, out: torch.Tensor, x: torch.Tensor, names: Sequence[str]) -> torch.Tensor:
        """Add each sample's update by its own adapter to ``out`` ``(B, ..., out)`` in place;
        none for adapters this layer does not hold. Inference path: no dropout.

        Two batched matmuls over per-sample gathered ``A`` and ``B`` (zero-padded to
        the largest rank), the second accumulating into ``out``. Without gradients the
        stacked, padded weights of all the layer's adapters are cached and rebuilt only
        when an adapter is added, removed, moved or changed (tensor version counters).
        """
        if self.merged_adapters:
            raise RuntimeError(
                f"per-sample adapters need unmerged weights; {self.merged_adapters} are merged"
            )
        if len(names) != x.shape[0]:
            raise ValueError(f"{len(names)} adapter names for a batch of {x.shape[0]}")
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.lora_A.values()):
            slot, a_cols, b_rows = self._stack(list(dict.fromkeys(n for n in names if n in self.lora_A)))
        else:
            slot, a_cols, b_rows = self._cached_stack()
        none = a_cols.shape[0] - 1  # the last slot is all zeros: no adapter on this layer
        index = torch.tensor([slot.get(n, none) for n in names], device=x.device)
        tokens = x.reshape(x.shape[0], -1, self.in_features)
        hidden = torch.bmm(tokens, a_cols.to(x.dtype)[index]).to(out.dtype)
        out.view(x.shape[0], -1, self.out_features).baddbmm_(hidden, b_rows.to(out.dtype)[index])
        return out

    def _stack(self, names: Sequence[str]) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
        """Slots of ``names`` and their scaled ``A^T`` ``(n+1, in, w)`` and dense ``B^T``
        ``(n+1, w, out)``, zero-padded to the widest ``w = segments * rank``; last slot zero."""
        ref = self.base.weight  # its dtype: the matmuls' (bf16 for int8 weights)
        width = max((self.rank(n) for n in names), default=0) * len(self.segments)
        a_cols = torch.zeros(len(names) + 1, self.in_features, width, dtype=ref.dtype, device=ref.device)
        b_rows = torch.zeros(len(names) + 1, width, self.out_features, dtype=ref.dtype, device=ref.device)
        for i, name in enumerate(names):
            a = self.lora_A[name].flatten(0, 1) * self.scaling[name]
            a_cols[i, :, : a.shape[0]] = a.T
            b_rows[i, : a.shape[0]] = self.dense_B(name).T
        return {name: i for i, name in enumerate(names)}, a_cols, b_rows

    def _cached_stack(self) -> tuple[dict[str, int], torch.Tensor, torch.Tensor]:
        """:meth:`_stack` of every adapter of the layer, rebuilt only when one changed."""
        key = tuple(
            (n, self.scaling[n], *(_identity(t) for t in (self.lora_A[n], self.lora_B[n])))
            for n in self.lora_A
        )
        if self._stack_cache is None or self._stack_cache[0] != key:
            with torch.no_grad():
                self._stack_cache = (key, *self._stack(list(self.lora_A)))
        return self._stack_cache[1:]

    def stack_bytes(self) -> int:
        """Bytes held by the cache of stacked adapters (see :meth:`add_mixed_delta`)."""
        if self._stack_cache is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._stack_cache[2:])

    def merged_for(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """The cached :meth:`merged_weight` of adapter ``name`` to run ``x`` through, or None
        (run unmerged).

        Only for inference, when :attr:`cache_merged` is on (the default): eval mode, no
        gradients, not under ``torch.compile``, a plain ``nn.Linear`` base without hooks
        whose weight has the dtype of ``x`` and of the adapter (so never with
        ``model.frozen_dtype``). Built by the first such call and
        reused while its key holds: the adapter's name and scale and the identity
        (storage and version counter) of its :meth:`merged_inputs` (``A``, ``B``, the base
        weight), so an optimizer step, a load, a merge or another routed adapter rebuilds it. One weight per layer,
        read into a local first, so threads routing different adapters each get their own.
        """
        base = self.base
        if not self.cache_merged or self.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        a = self.lora_A[name]
        plain = type(base) is nn.Linear and not (base._forward_hooks or base._forward_pre_hooks)
        if not plain or not base.weight.dtype == a.dtype == x.dtype:
            return None
        key = (name, self.scaling[name], *map(_storage_version, self.merged_inputs(name)))
        cache = self._merged_cache
        if cache is None or cache[0] != key:
            cache = (key, self.merged_weight(name))
            self._merged_cache = cache
        return cache[1]

    def merged_inputs(self, name: str) -> tuple[torch.Tensor, ...]:
        """The tensors :meth:`merged_weight` of adapter ``name`` is built from (its cache key)."""
        return self.lora_A[name], self.lora_B[name], self.base.weight

    def merged_weight(self, name: str) -> torch.Tensor:
        """A new tensor ``W + scale * B @ A`` of adapter ``name`` (the base weight is unchanged).

        One copy of ``W`` and one ``addmm_`` per segment into its rows (contiguous), with the
        scale as ``alpha``: about half the time of building ``delta_weight`` and adding it.
        """
        merged = self.base.weight.clone()
        a, b = self.lora_A[name], self.lora_B[name]
        for s, (start, stop) in enumerate(self.segments):
            merged[start:stop].addmm_(b[s], a[s], alpha=self.scaling[name])
        return merged

    def merged_bytes(self) -> int:
        """Bytes held by the cached merged weight (see :meth:`merged_for`)."""
        cache = self._merged_cache
        return 0 if cache is None else cache[1].numel() * cache[1].element_size()

    def delta_weight(self, name: str) -> torch.Tensor:
        """``scale * B @ A`` for every segment, shape ``(S*seg, in)``."""
        a, b = self.lora_A[name], self.lora_B[name]
        return torch.einsum("sor,sri->soi", b, a).flatten(0, 1) * self.scaling[name]

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Fold adapter ``name`` (default: the first) into the base weight (inference: zero extra cost)."""
        name = self.adapter_or_first(name)
        if name is None or name in self.merged_adapters:
            return
        w = self.base.weight
        w.index_add_(0, self.segment_index, self.delta_weight(name).to(w.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str | None = None) -> None:
        """Undo :meth:`merge` of adapter ``name`` (default: the first)."""
        name = self.adapter_or_first(name)
        if name not in self.merged_adapters:
            return
        w = self.base.weight
        w.index_add_(0, self.segment_index, -self.delta_weight(name).to(w.dtype))
        self.merged_adapters.remove(name)

    def extra_repr(self) -> str:
        ranks = {n: self.rank(n) for n in self.lora_A}
        return f"segments={self.segments}, adapters={ranks}"


def _identity(t: torch.Tensor) -> tuple:
    """Changes whenever the tensor's storage or contents change (in-place updates bump the version)."""
    return t.data_ptr(), t._version, t.device, t.dtype


def _storage_version(t: torch.Tensor) -> tuple[int, int]:
    """Changes when the tensor moves or is reassigned (storage) or changes in place (version);
    cheaper than :func:`_identity` (no device and dtype objects) for a check on every call."""
    return t.data_ptr(), t._version
