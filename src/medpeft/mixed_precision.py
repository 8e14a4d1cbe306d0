"""Mixed precision by device: the one autocast policy of training, evaluation and serving."""

from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (fp16 or bf16) and on the CPU (bf16 only: CPU fp16 matmuls
    are slow); a no-op elsewhere, for CPU fp16, or when ``dtype`` is None."""
    if dtype is None or device.type not in ("cuda", "cpu"):
        return contextlib.nullcontext()
    if device.type == "cpu" and dtype is not torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
