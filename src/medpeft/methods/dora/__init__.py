"""DoRA (Weight-Decomposed Low-Rank Adaptation, Liu et al., arXiv 2402.09353) as a tuning method.

A drop-in for LoRA (``method: dora``, a ``dora:`` section with LoRA's fields and
defaults: q and v of every block, r=4, alpha=4): each adapted output row gets a
learned magnitude on top of LoRA's low-rank direction update. The layer is
:class:`medpeft.methods.dora.layer.DoraLinear`, attached by
LoRA's target finding (:mod:`medpeft.methods.lora.attach`). Mergeable; one adapter per batch (not mixable).
"""

from __future__ import annotations

from medpeft.methods.dora.layer import DoraLinear
from medpeft.methods.dora.settings import DoraSettings
from medpeft.methods.lora import LoRA


class DoRA(LoRA):
    """LoRA's low-rank direction update plus a learned magnitude per output row; mergeable."""

    name = "dora"
    settings_type = DoraSettings
    adapter_dicts = ("lora_A", "lora_B", "lora_magnitude")
    mixable = False
    reads_frozen_weights = True  # the row norms of W + s·B·A
    layer_type = DoraLinear


__all__ = ["DoRA", "DoraSettings"]
