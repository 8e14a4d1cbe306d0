"""DoRA's single-adapter inference runs on its merged ``W'``, cached by LoRA's ``merged_for``.

The reference is the unmerged path (gradients on: the cache is never used), which scales LoRA's
output by ``m / ||W0 + s B A||`` at every call.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medpeft.methods.dora.attach import dora_layers
from medpeft.methods.dora.layer import DoraLinear
from medpeft.methods.lora.attach import cache_merged_weights
from medpeft.model import build_model
from tests.methods.test_dora import _layer, _randomize, _spec

TOLERANCE = dict(rtol=0, atol=1e-5)


def _unmerged(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        return module(x).detach()


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model(_spec()).eval()
    _randomize(model)
    return model


def _count_row_scale(monkeypatch) -> list[str]:
    """The adapter names :meth:`DoraLinear.row_scale` (the row norms) is called with from now on."""
    calls: list[str] = []
    row_scale = DoraLinear.row_scale
    monkeypatch.setattr(DoraLinear, "row_scale", lambda self, name: calls.append(name) or row_scale(self, name))
    return calls


def _merged_bytes(model: nn.Module) -> int:
    return sum(layer.merged_bytes() for layer in dora_layers(model).values())


@pytest.mark.parametrize("segments, bias", [(None, True), ([(0, 16), (32, 48)], True), ([(16, 32)], False)])
def test_cached_weight_equals_the_unmerged_output_and_the_norms_are_computed_once(segments, bias, monkeypatch):
    layer = _layer(segments, bias=bias).eval()
    x = torch.randn(2, 5, 16)
    unmerged = _unmerged(layer, x)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), unmerged, **TOLERANCE)
        assert layer.merged_bytes() == layer.base.weight.nbytes
        calls = _count_row_scale(monkeypatch)
        torch.testing.assert_close(layer(x), unmerged, **TOLERANCE)  # from the cached W'
    assert calls == []


def test_a_whole_model_in_inference_mode_equals_the_unmerged_path():
    model = _model()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    unmerged = _unmerged(model, x)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), unmerged, **TOLERANCE)
    assert all(layer.merged_bytes() > 0 for layer in dora_layers(model).values())


@pytest.mark.parametrize("changed", ["lora_A", "lora_B", "lora_magnitude", "base"])
def test_an_in_place_change_rebuilds_the_cached_weight(changed):
    layer = _layer([(0, 16), (32, 48)]).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        before = layer(x)
        tensor = layer.base.weight if changed == "base" else getattr(layer, changed)["t"]
        tensor.mul_(1.5)
        after = layer(x)
    assert not torch.allclose(after, before, atol=1e-3)
    torch.testing.assert_close(after, _unmerged(layer, x), **TOLERANCE)


def test_training_mode_never_uses_the_cache():
    layer = _layer().eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        layer(x)
    assert layer.merged_bytes() > 0
    layer.train()
    assert layer.merged_bytes() == 0
    with torch.no_grad():
        layer(x)
        layer.lora_magnitude["t"].mul_(2.0)  # a W' built by the call above would not see this
        torch.testing.assert_close(layer(x), _unmerged(layer, x), **TOLERANCE)
    assert layer.merged_bytes() == 0


def test_turned_off_as_the_adapter_bank_does_it_runs_unmerged(monkeypatch):
    model = _model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cached = model(x)
        cache_merged_weights(model, False)
        assert _merged_bytes(model) == 0
        calls = _count_row_scale(monkeypatch)
        torch.testing.assert_close(model(x), cached, **TOLERANCE)
    assert len(calls) == len(dora_layers(model))  # the unmerged path: the norms at every call
    assert _merged_bytes(model) == 0
