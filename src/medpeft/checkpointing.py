"""Activation checkpointing of every backbone block, with the call's routing carried into backward.

:func:`enable_checkpointing` makes each block of each backbone view
(:meth:`~medpeft.backbones.base.Backbone.block_names`) run under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``: its activations are
dropped after the forward and recomputed in backward. The recomputation runs outside
the forward's :func:`medpeft.routing.route` block, so the routing the block saw
(MoRA presence masks, per-sample adapters) is captured at forward time and entered
again around the recomputation; early-intervention masks are block arguments and are
replayed by ``checkpoint`` itself, MoR routers recompute their weights from the same
inputs. The block's ``forward`` is replaced on the instance only, so parameter names,
state dicts and adapter files do not change; :func:`disable_checkpointing` restores it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medpeft import routing
from medpeft.backbones.base import Backbone, describe
from medpeft.errors import ConfigError

_UNCHECKED = "_medpeft_unchecked_forward"
BYTES_PER_ACTIVATION = 30
"""Bytes a transformer block keeps per token and channel for backward (rough, fp32 with AMP copies)."""
ASSUMED_PATCH = 16
"""Patch side (px) the :func:`activation_bytes` estimate assumes for the token count."""


def backbone_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every backbone of ``model`` (a fusion model or a bare backbone), in forward order.

    Raises:
        ConfigError: ``model`` is neither a fusion model with backbone views nor a backbone medpeft reads.
    """
    views = _views(model)
    return [model.get_submodule(f"{prefix}.{name}" if prefix else name)
            for prefix, view in views.items() for name in view.block_names()]


def enable_checkpointing(model: nn.Module) -> int:
    """Checkpoint every backbone block of ``model`` (idempotent); returns the number of blocks."""
    blocks = backbone_blocks(model)
    for block in blocks:
        if _UNCHECKED not in vars(block):
            setattr(block, _UNCHECKED, block.forward)
            block.forward = types.MethodType(_checkpointed_forward, block)
    return len(blocks)


def disable_checkpointing(model: nn.Module) -> None:
    """Give every backbone block of ``model`` its own forward back."""
    for block in backbone_blocks(model):
        if _UNCHECKED not in vars(block):
            continue
        inner = vars(block).pop(_UNCHECKED)
        if getattr(inner, "__func__", None) is type(block).forward:
            del block.forward  # the class's own forward: nothing left on the instance
        else:
            block.forward = inner


def is_checkpointed(block: nn.Module) -> bool:
    """Whether :func:`enable_checkpointing` wraps ``block``."""
    return _UNCHECKED in vars(block)


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """The block's own forward under non-reentrant checkpointing (plain when no gradient is taken)."""
    inner = vars(self)[_UNCHECKED]
    if not torch.is_grad_enabled():
        return inner(*args, **kwargs)
    return checkpoint(carry_routing(inner, routing.current()), *args, use_reentrant=False, **kwargs)


def carry_routing(fn: Callable[..., Any], captured: routing.Routing) -> Callable[..., Any]:
    """``fn`` run inside the routing ``captured`` in forward, also when backward recomputes it."""

    def routed(*args: Any, **kwargs: Any) -> Any:
        with routing.route(presence=captured.presence, adapters=captured.adapters):
            return fn(*args, **kwargs)

    return routed


def activation_bytes(model: nn.Module, batch_size: int, img_size: int | None = None) -> int:
    """Rough activation memory of one training forward: batch x tokens x width x blocks x
    :data:`BYTES_PER_ACTIVATION`, tokens counted as 16 px patches of every modality's image
    (``img_size``, else the size each backbone was pretrained at)."""
    modalities = max(1, len(getattr(model, "modalities", ())))
    total = 0
    for view in _views(model).values():
        side = img_size or view.preprocessing()["size"]
        tokens = modalities * max(1, (side // ASSUMED_PATCH) ** 2)
        total += batch_size * tokens * view.token_width * len(view.block_names()) * BYTES_PER_ACTIVATION
    return total


def available_bytes(device: torch.device) -> int | None:
    """Free memory of ``device``: the GPU's free memory, the host's ``MemAvailable`` for
    the CPU; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    kib = next((line.split()[1] for line in lines if line.startswith("MemAvailable:")), None)
    return int(kib) * 1024 if kib is not None else None


def wants_checkpointing(
    setting: bool | str, model: nn.Module, batch_size: int, img_size: int | None, device: torch.device
) -> bool:
    """Whether ``train.activation_checkpointing`` turns checkpointing on for this run:
    ``auto`` does when the estimated activations (:func:`activation_bytes`) exceed half of
    the device's free memory, and never for a model without backbone blocks or an unknown device."""
    if setting != "auto":
        return bool(setting)
    free = available_bytes(device)
    try:
        return free is not None and activation_bytes(model, batch_size, img_size) > free // 2
    except ConfigError:  # no backbone blocks to checkpoint (ViLT)
        return False


def _views(model: nn.Module) -> dict[str, Backbone]:
    views = getattr(model, "backbone_views", None)
    if views is not None:
        return views()
    try:
        return {"": describe(model)}
    except ConfigError:
        raise ConfigError(
            f"activation checkpointing: {type(model).__name__} has no backbone blocks medpeft can "
            "checkpoint (timm, transformers and open_clip backbones and the fusion models over them have)"
        ) from None
