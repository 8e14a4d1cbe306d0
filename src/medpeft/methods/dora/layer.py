"""DoRA layer (Weight-Decomposed Low-Rank Adaptation, Liu et al., arXiv 2402.09353).

DoRA splits each adapted output row of a frozen Linear into a direction and a
learned magnitude::

    W' = m * (W0 + s B A) / ||W0 + s B A||_c        (per output row, s = alpha / r)

``m`` starts at the row norms of ``W0``, so a fresh adapter (B = 0) leaves the layer
unchanged. The norm is a constant in backward (detached, the paper's section 4.3
and Hugging Face PEFT). :class:`DoraLinear` is a
:class:`~medpeft.methods.lora.layer.LoRALinear` (segments of a fused ``qkv``, named
adapters, routing) plus ``lora_magnitude[name]`` of shape ``(segments, seg_out)``.

The training forward never builds ``W'``: with ``g = m / ||W0 + s B A||_c`` on the
adapted rows (1 elsewhere) and LoRA's output ``y = W0 x + b + s B A x``::

    out = g * (y - b) + b  =  W0 x + b + (g - 1) * W0 x + g * s B A x

which is PEFT's formula; the bias is not scaled. LoRA dropout acts on ``x`` of the
low-rank branch only (PEFT also feeds the dropped ``x`` to the ``(g - 1) W0 x`` term).
Inference with one adapter (eval mode, no gradients) runs on ``W'`` itself, built once
and cached by LoRA's :meth:`~medpeft.methods.lora.layer.LoRALinear.merged_for` (its key
also holds the magnitude), so the row norms are not recomputed at every call.
"""

from __future__ import annotations

import torch
from torch import nn

from medpeft.methods.lora.layer import LoRALinear
from medpeft.routing import current


class DoraLinear(LoRALinear):
    """A frozen Linear plus named DoRA adapters: LoRA's ``A``, ``B`` and a row magnitude.

    Merging replaces the adapted rows of the base weight by ``W'`` and keeps the
    original rows (outside the state dict) to restore them exactly on unmerge; one
    adapter is merged at a time. One adapter serves a whole batch (not mixable).
    """

    def __init__(self, base: nn.Linear, segments: list[tuple[int, int]] | None = None) -> None:
        super().__init__(base, segments)
        self.lora_magnitude = nn.ParameterDict()
        self.original_rows: dict[str, torch.Tensor] = {}

    def add_adapter(self, name: str, rank: int = 4, alpha: float = 4.0, dropout: float = 0.0) -> None:
        """LoRA's fresh ``A``, ``B`` (zero) and the magnitude ``m = ||W0||`` per adapted row."""
        super().add_adapter(name, rank, alpha, dropout)
        with torch.no_grad():
            norms = self.adapted_rows().norm(dim=1)
        self.lora_magnitude[name] = nn.Parameter(norms.view(len(self.segments), self.segment_size))

    def delete_adapter(self, name: str) -> None:
        super().delete_adapter(name)  # unmerges first
        del self.lora_magnitude[name]

    def adapted_rows(self) -> torch.Tensor:
        """The base weight's adapted rows, ``(S*seg, in)`` (the weight itself when all are adapted)."""
        weight = self.base.weight
        return weight if self.covers_all else weight[self.segment_index]

    def merged_rows(self, name: str) -> torch.Tensor:
        """``W'`` on the adapted rows ``(S*seg, in)``: ``m * (W0 + s B A) / ||W0 + s B A||_c``."""
        return self.row_scale(name)[:, None] * (self.adapted_rows() + self.delta_weight(name))

    def merged_inputs(self, name: str) -> tuple[torch.Tensor, ...]:
        """LoRA's ``A``, ``B`` and base weight, and the magnitude (the cache key of ``W'``)."""
        return *super().merged_inputs(name), self.lora_magnitude[name]

    def merged_weight(self, name: str) -> torch.Tensor:
        """A new tensor ``W'`` of adapter ``name``: the base weight with its adapted rows merged."""
        rows = self.merged_rows(name)
        return rows if self.covers_all else self.base.weight.index_copy(0, self.segment_index, rows)

    def row_scale(self, name: str) -> torch.Tensor:
        """``m / ||W0 + s B A||_c`` on the adapted rows ``(S*seg,)``; the norm is detached."""
        with torch.no_grad():
            norms = (self.adapted_rows() + self.delta_weight(name)).norm(dim=1)
        return self.lora_magnitude[name].flatten() / norms

    def output_scale(self, name: str) -> torch.Tensor:
        """:meth:`row_scale` spread over all outputs ``(out,)``: 1 on rows not adapted."""
        scale = self.row_scale(name)
        if self.covers_all:
            return scale
        return scale.new_ones(self.out_features).index_copy(0, self.segment_index, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = current()
        if routing.is_mixed():
            raise ValueError(
                "DoRA serves one adapter per batch; got per-sample adapters "
                f"{sorted(set(routing.adapters))}"
            )
        name = routing.adapter_for(self.lora_A)
        if self.merged_adapters and name not in self.merged_adapters:
            raise RuntimeError(
                f"adapter {self.merged_adapters[0]!r} is merged into this layer; unmerge it "
                f"before running adapter {name!r}"
            )
        return super().forward(x)  # W' x + b: merged, cached (merged_for) or unmerged_forward

    def unmerged_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``g * (y - b) + b`` from LoRA's ``y = W0 x + b + s B A x`` (see the module docstring)."""
        out = super().unmerged_forward(x, name)
        scale = self.output_scale(name).to(out.dtype)
        bias = self.base.bias
        if bias is None:
            return out * scale
        return torch.addcmul(bias.to(out.dtype), out - bias.to(out.dtype), scale)

    @torch.no_grad()
    def merge(self, name: str | None = None) -> None:
        """Replace the adapted rows of the base weight by ``W'`` of adapter ``name`` (default: the first)."""
        name = self.adapter_or_first(name)
        if name is None or name in self.merged_adapters:
            return
        if self.merged_adapters:
            raise RuntimeError(
                f"DoRA merges one adapter at a time; unmerge {self.merged_adapters[0]!r} first"
            )
        weight = self.base.weight
        self.original_rows[name] = self.adapted_rows().clone()
        weight.index_copy_(0, self.segment_index, self.merged_rows(name).to(weight.dtype))
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str | None = None) -> None:
        """Restore the base weight's rows saved by :meth:`merge` (exactly)."""
        name = self.adapter_or_first(name)
        if name not in self.merged_adapters:
            return
        weight = self.base.weight
        weight.index_copy_(0, self.segment_index, self.original_rows.pop(name).to(weight))
        self.merged_adapters.remove(name)
