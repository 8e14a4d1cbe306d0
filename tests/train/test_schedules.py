"""Optimizer parameter groups and per-step learning-rate schedules."""

import math

import pytest
import torch
from torch import nn

from medpeft.errors import ConfigError
from medpeft.train.schedules import build_optimizer, build_scheduler, lr_at

LR, MIN_LR, TOTAL, WARMUP = 1e-3, 1e-6, 22, 5


def test_warmup_then_cosine_known_steps():
    def at(step: int) -> float:
        return lr_at(step, LR, MIN_LR, TOTAL, WARMUP, "cosine")

    assert at(0) == pytest.approx(LR / WARMUP)
    assert at(WARMUP - 1) == pytest.approx(LR)
    assert at(WARMUP) == pytest.approx(LR)
    assert at(WARMUP + 8) == pytest.approx((LR + MIN_LR) / 2)  # decay runs over steps 5..21
    assert at(TOTAL - 1) == pytest.approx(MIN_LR)
    assert at(TOTAL + 3) == pytest.approx(MIN_LR)


def test_linear_and_constant():
    assert lr_at(0, LR, 0.0, 11, 0, "linear") == pytest.approx(LR)
    assert lr_at(5, LR, 0.0, 11, 0, "linear") == pytest.approx(LR / 2)
    assert lr_at(10, LR, 0.0, 11, 0, "linear") == pytest.approx(0.0)
    assert lr_at(10, LR, 0.0, 11, 2, "constant") == pytest.approx(LR)
    assert lr_at(0, LR, 0.0, 11, 2, "constant") == pytest.approx(LR / 2)


def test_scheduler_follows_lr_at_per_optimizer_step():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=LR)
    scheduler = build_scheduler(optimizer, "cosine", TOTAL, WARMUP, MIN_LR)
    used = []
    for _ in range(TOTAL):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [lr_at(s, LR, MIN_LR, TOTAL, WARMUP, "cosine") for s in range(TOTAL)]
    assert used == pytest.approx(expected)
    assert used[-1] == pytest.approx(MIN_LR)


def test_optimizer_takes_only_trainable_params_and_skips_decay_on_1d():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, "adamw", 1e-3, weight_decay=0.02, betas=(0.9, 0.98))
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [torch.Size([2, 4])]
    assert len(no_decay["params"]) == 3  # norm weight, norm bias, head bias
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.02, 0.0)
    assert decay["betas"] == (0.9, 0.98)
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])


def test_sgd_momentum_and_errors():
    model = nn.Linear(3, 1)
    assert build_optimizer(model, "sgd", 0.1, momentum=0.8).param_groups[0]["momentum"] == 0.8
    with pytest.raises(ConfigError, match="optimizer"):
        build_optimizer(model, "lion", 0.1)
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer(model, "adam", 0.1)


def test_no_warmup_single_step_is_finite():
    assert math.isfinite(lr_at(0, LR, MIN_LR, 1, 0, "cosine"))


def test_cyclic_matches_torch_cyclic_lr_with_shrinking_amplitude():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    reference = torch.optim.lr_scheduler.CyclicLR(
        optimizer, 1e-5, 1e-3, step_size_up=3, scale_fn=lambda c: 0.8 ** (c - 1), cycle_momentum=False
    )
    expected = []
    for _ in range(20):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    ours = [lr_at(s, 1e-3, 1e-5, 20, 0, "cyclic", cycle_steps=3, cycle_decay=0.8) for s in range(20)]
    assert ours == pytest.approx(expected, rel=1e-9)
    assert max(ours[6:12]) == pytest.approx(1e-5 + 0.8 * (1e-3 - 1e-5))  # second cycle's peak
