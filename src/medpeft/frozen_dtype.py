"""Frozen backbone weights stored in low precision (``model.frozen_dtype``).

:func:`cast_frozen` casts the frozen ``nn.Linear`` and ``nn.Conv*`` layers of a model
(weight and bias: all but a few thousandths of a ViT's parameters) to ``bfloat16`` or
``float16`` and leaves everything else as it is: trainable parameters (adapters, head),
normalisation layers, class/register tokens and position embeddings stay fp32. Each
cast layer gets two hooks: its floating inputs are cast to its own dtype before the
matmul and its output back to fp32, so activations between layers, adapter updates,
gradients, optimizer state and saved adapters stay fp32 and no layer of a method needs
to know. Parameter names are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FROZEN_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
CAST_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast every frozen Linear/Conv layer of ``model`` to ``dtype`` in place.

    A layer counts as frozen when none of its own parameters requires grad (a LoRA
    layer's wrapped ``base`` is frozen, the LoRA layer itself is not a cast layer).
    ``float32`` leaves the model as it is.

    Returns:
        The number of parameter elements now held in ``dtype``.
    """
    if dtype == torch.float32:
        return 0
    cast = 0
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not isinstance(module, CAST_LAYERS) or not params or any(p.requires_grad for p in params):
            continue
        module.to(dtype)
        module.register_forward_pre_hook(_inputs_to_own_dtype)
        module.register_forward_hook(_output_to_float32)
        cast += sum(p.numel() for p in params)
    return cast


def _inputs_to_own_dtype(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: floating tensor arguments in the layer's weight dtype."""
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def _output_to_float32(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: the layer's output back in fp32 for the rest of the model."""
    return output.float() if torch.is_tensor(output) else output
