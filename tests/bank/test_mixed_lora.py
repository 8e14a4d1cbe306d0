"""LoRALinear's per-sample path: cached stacks follow every change; gradients flow when training."""

from __future__ import annotations

import torch
from torch import nn

from medpeft.methods.lora.layer import LoRALinear
from medpeft.routing import route


def _layer() -> LoRALinear:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 12), [(0, 4), (8, 12)])
    layer.add_adapter("a", rank=2)
    layer.add_adapter("b", rank=3, alpha=6.0)
    with torch.no_grad():
        for b in layer.lora_B.values():
            b.normal_()
    return layer


def _each_alone(layer: LoRALinear, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    rows = []
    for xi, name in zip(x, names):
        with route(adapters=name):
            rows.append(layer(xi[None])[0])
    return torch.stack(rows)


def test_cached_stacks_follow_updates_additions_and_removals():
    layer = _layer()
    x = torch.randn(4, 5, 8)
    names = ["a", "b", "none", "a"]
    with torch.no_grad(), route(adapters=names):
        first = layer(x)
        torch.testing.assert_close(first, _each_alone(layer, x, names))
        layer.lora_B["a"].mul_(2.0)  # an in-place update, as an optimizer step makes
        second = layer(x)
        torch.testing.assert_close(second, _each_alone(layer, x, names))
        assert not torch.allclose(first[0], second[0]) and torch.equal(first[1], second[1])
        layer.add_adapter("none", rank=1)
        with torch.no_grad():
            layer.lora_B["none"].fill_(1.0)
        third = layer(x)
        torch.testing.assert_close(third, _each_alone(layer, x, names))
        assert not torch.allclose(third[2], layer.base(x[2]))
        layer.delete_adapter("b")
        torch.testing.assert_close(layer(x)[1], layer.base(x[1]))
    assert layer.stack_bytes() > 0


def test_mixed_and_single_batches_train_the_routed_adapters():
    layer = _layer()
    x = torch.randn(3, 5, 8, requires_grad=True)
    with route(adapters=["a", "b", "a"]):
        layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.lora_A.values())
    assert layer.stack_bytes() == 0  # the training path builds no cache
    layer.zero_grad()
    with route(adapters="b"):
        layer(x).square().sum().backward()
    assert layer.lora_A["a"].grad is None or not layer.lora_A["a"].grad.any()
    assert layer.lora_B["b"].grad.abs().sum() > 0 and x.grad is not None
