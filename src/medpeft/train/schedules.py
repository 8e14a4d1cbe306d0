"""Optimizers (only trainable parameters, no decay on 1-D ones) and per-step lr schedules.

Schedule over optimizer steps ``s = 0 .. total - 1`` with ``W`` warmup steps:
warmup ramps linearly ``lr * (s + 1) / W`` up to ``lr`` at ``s = W - 1``; then
``cosine`` or ``linear`` decays from ``lr`` at ``s = W`` to ``min_lr`` at the last
step ``s = total - 1``; ``constant`` stays at ``lr``; ``cyclic`` is torch's
``CyclicLR`` triangle with a shrinking amplitude: from ``min_lr`` up to ``lr`` over
``cycle_steps`` steps and back down over as many, the height of cycle ``c`` (from 1)
scaled by ``cycle_decay ** (c - 1)``.
MeLo: Adam, lr 1e-3, cosine to 1e-6. MoRA: AdamW betas (0.9, 0.98), wd 0.02,
2% warmup, linear decay. EI: SGD, cyclic between 1e-5 and 1e-3, half a cycle = 4
epochs, amplitude x0.8 per cycle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from medpeft.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant", "cyclic")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group and a no-decay group (biases, norms)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: Sequence[float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) over the model's trainable parameters.

    Raises:
        ConfigError: for an unknown optimizer or a model with nothing to train.
    """
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ConfigError("model has no trainable parameters (none with requires_grad=True)")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas))
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ConfigError(f"optimizer: expected one of {OPTIMIZERS}, got {name!r}")


def lr_at(
    step: int,
    lr: float,
    min_lr: float,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    cycle_steps: int = 1,
    cycle_decay: float = 1.0,
) -> float:
    """Learning rate used by optimizer step ``step`` (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "cyclic":
        position = (step - warmup_steps) / cycle_steps  # in half cycles
        cycle = math.floor(1 + position / 2)
        height = max(0.0, 1.0 - abs(position - 2 * cycle + 1))
        return min_lr + (lr - min_lr) * height * cycle_decay ** (cycle - 1)
    decay_steps = total_steps - 1 - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1.0 - progress)
    raise ConfigError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")


def _factor(step: int, base_lr: float, **kwargs) -> float:
    """``lr_at`` relative to the group's base lr (what ``LambdaLR`` expects)."""
    return lr_at(step, base_lr, **kwargs) / base_lr


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    cycle_steps: int = 1,
    cycle_decay: float = 1.0,
) -> LambdaLR:
    """A per-optimizer-step scheduler following ``lr_at`` for every parameter group."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    lambdas = [
        functools.partial(
            _factor,
            base_lr=group["lr"],
            min_lr=min_lr,
            total_steps=total_steps,
            warmup_steps=warmup_steps,
            schedule=schedule,
            cycle_steps=max(1, cycle_steps),
            cycle_decay=cycle_decay,
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lambdas)
