"""MoR with per-modality up-projections (``mor.per_modality``): MoRA's routing on MoR.

Each sample sums the up-projections of the modalities it has; the mask comes from the
call's routing (`medpeft.routing.current`), never from state on the layer.
"""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from medpeft.errors import ConfigError
from medpeft.methods.mor import MorSettings
from medpeft.methods.mor.attach import mor_layers
from medpeft.methods.mor.layer import MoRLinear
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

TINY = dict(patch_size=8, embed_dim=16, depth=1, num_heads=2)


def _layer(modalities=("a", "b")) -> MoRLinear:
    torch.manual_seed(0)
    layer = MoRLinear(nn.Linear(6, 5))
    layer.add_adapter("default", (1, 2), modalities=modalities)
    with torch.no_grad():
        layer.mor_B["default"].normal_()
    return layer


def test_each_sample_sums_the_up_projections_of_its_modalities():
    layer, x = _layer(), torch.randn(3, 4, 6)
    present = torch.tensor([[1, 1], [1, 0], [0, 1]], dtype=torch.bool)
    with route(presence=present), torch.no_grad():
        out = layer(x)
    plain = MoRLinear(layer.base)
    plain.add_adapter("default", (1, 2))
    b = layer.mor_B["default"]
    for i, up in enumerate((b[0] + b[1], b[0], b[1])):
        with torch.no_grad():
            for name in ("mor_A", "mor_router_weight", "mor_router_bias"):
                getattr(plain, name)["default"].copy_(getattr(layer, name)["default"])
            plain.mor_B["default"].copy_(up)
            torch.testing.assert_close(out[i], plain(x[i : i + 1])[0])
    assert layer.mor_B["default"].shape == (2, 5, 3) and layer.num_adapter_parameters("default") == 18 + 30 + 18 + 3


def test_the_mask_comes_from_the_call_not_the_layer():
    layer, x = _layer(), torch.randn(2, 3, 6)
    masks = [torch.tensor([[1, 0], [0, 1]], dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)]
    with torch.no_grad():
        alone = []
        for mask in masks:
            with route(presence=mask):
                alone.append(layer(x))
        torch.testing.assert_close(layer(x), alone[1])  # nothing routed: every modality
    assert not torch.allclose(alone[0], alone[1])
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(2)

    def call(i: int) -> None:
        with route(presence=masks[i]), torch.no_grad():
            barrier.wait()
            results[i] = layer(x)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        torch.testing.assert_close(results[i], alone[i])


def _model() -> nn.Module:
    spec = ModelSpec("vit_tiny_patch16_224", 3, "mor", MorSettings(per_modality=True, ranks=(2,)), 16,
                     ("a", "b"), model_kwargs=dict(TINY))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    with torch.no_grad():
        for layer in mor_layers(model).values():
            layer.mor_B["default"].normal_(std=0.5)
    return model


def test_a_sample_missing_a_modality_routes_differently_in_one_stream():
    model = _model()
    images = {m: torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i, m in enumerate("ab")}
    complete = torch.ones(2, 2, dtype=torch.bool)
    partial = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    with torch.no_grad():
        full = model({"images": images, "present": complete})
        some = model({"images": images, "present": partial})
        for layer in mor_layers(model).values():
            layer.mor_B["default"][1].zero_()  # without modality b's experts
        only_a = model({"images": images, "present": complete})
    torch.testing.assert_close(some[0], full[0])
    assert not torch.allclose(some[1], full[1], atol=1e-4)
    torch.testing.assert_close(some[1], only_a[1])


def test_per_modality_needs_one_stream_with_several_modalities():
    spec = ModelSpec("vit_tiny_patch16_224", 3, "mor", MorSettings(per_modality=True), 16, ("a", "b"),
                     model_kwargs=dict(TINY), fusion="early_intervention")
    with pytest.raises(ConfigError, match=r"mor.per_modality: needs several modalities in one token stream"):
        build_model(spec)
