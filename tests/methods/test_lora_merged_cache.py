"""LoRA's cached merged weight: inference with one routed adapter runs ``W + scale * B @ A``.

Each test compares against the unmerged path (gradients enabled or training mode, where the
cache is never used) and checks the cache follows every change that makes it stale.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medpeft.frozen_dtype import cast_frozen
from medpeft.methods import LoraSettings
from medpeft.methods.lora.attach import add_lora, cache_merged_weights, lora_layers
from medpeft.methods.lora.layer import LoRALinear
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route
from tests.test_api import HF

TOLERANCE = dict(rtol=0, atol=1e-5)


def _model(family: str, randomize_lora) -> nn.Module:
    """A tiny adapted model of ``family`` in eval mode with a random (acting) adapter."""
    if family == "timm_vit":
        spec = ModelSpec(
            "vit_tiny_patch16_224",
            3,
            settings=LoraSettings(rank=4),
            img_size=32,
            model_kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=8),
        )
    else:
        spec = ModelSpec(
            "tiny-dinov2",
            3,
            settings=LoraSettings(rank=2, targets=("q", "v", "fc1")),
            kind="transformers",
            model_kwargs=dict(model_type="dinov2", **HF, mlp_ratio=2),
        )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    randomize_lora(model)
    return model


def _unmerged(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output by the unmerged path (gradients on: the cache is never used)."""
    with torch.enable_grad():
        return model(x).detach()


def _merged_bytes(model: nn.Module) -> int:
    return sum(layer.merged_bytes() for layer in lora_layers(model).values())


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family", ["timm_vit", "hf_dinov2"])
def test_merged_inference_equals_unmerged(family, randomize_lora):
    model = _model(family, randomize_lora)
    x = _images()
    unmerged = _unmerged(model, x)
    assert _merged_bytes(model) == 0
    with torch.inference_mode():
        merged = model(x)
    torch.testing.assert_close(merged, unmerged, **TOLERANCE)
    layers = lora_layers(model).values()
    assert all(layer.merged_bytes() == layer.base.weight.nbytes for layer in layers)
    with torch.no_grad():
        torch.testing.assert_close(model(x), merged, rtol=0, atol=0)  # the same weights again


def test_no_cache_under_gradients_or_in_training(randomize_lora):
    model = _model("timm_vit", randomize_lora)
    x = _images()
    model(x).sum().backward()
    layer = next(iter(lora_layers(model).values()))
    assert layer.lora_B["default"].grad.abs().sum() > 0
    assert _merged_bytes(model) == 0
    with torch.no_grad():
        model(x)
    assert _merged_bytes(model) > 0
    model.train()  # going back to training frees the merged weights
    assert _merged_bytes(model) == 0
    with torch.no_grad():
        model(x)
    assert _merged_bytes(model) == 0


def test_cache_follows_a_training_step(randomize_lora):
    model = _model("timm_vit", randomize_lora)
    x = _images()
    with torch.no_grad():
        before = model(x)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(x).square().sum().backward()  # eval mode, gradients on: a step without train()
    optimizer.step()
    with torch.no_grad():
        after = model(x)
    assert not torch.allclose(after, before, atol=1e-3) and _merged_bytes(model) > 0
    torch.testing.assert_close(after, _unmerged(model, x), **TOLERANCE)


def test_cache_follows_a_reload_and_a_base_weight_change(randomize_lora):
    model = _model("timm_vit", randomize_lora)
    x = _images()
    with torch.no_grad():
        model(x)
    state = {k: torch.randn_like(v) * 0.3 for k, v in model.state_dict().items() if ".lora_" in k}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _unmerged(model, x), **TOLERANCE)
        next(iter(lora_layers(model).values())).base.weight.mul_(2.0)
        torch.testing.assert_close(model(x), _unmerged(model, x), **TOLERANCE)
    assert _merged_bytes(model) > 0


def test_other_routed_adapter_rebuilds_and_mixed_batches_stay_exact(randomize_lora):
    model = _model("timm_vit", randomize_lora)
    add_lora(model, rank=2, adapter_name="other")
    randomize_lora(model, seed=3)
    x = _images(4)
    alone = {name: _unmerged_routed(model, x, name) for name in ("default", "other")}
    layer = next(iter(lora_layers(model).values()))
    with torch.no_grad():
        for name in ("default", "other", "default"):
            with route(adapters=name):
                torch.testing.assert_close(model(x), alone[name], **TOLERANCE)
            assert layer.merged_bytes() == layer.base.weight.nbytes  # one weight per layer
        names = ["other", "default", "default", "other"]
        with route(adapters=names):
            mixed = model(x)
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], alone[name][i], **TOLERANCE)


def _unmerged_routed(model: nn.Module, x: torch.Tensor, name: str) -> torch.Tensor:
    with route(adapters=name):
        return _unmerged(model, x)


def test_not_used_on_low_precision_frozen_weights_or_merged_layers():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 12), [(0, 4), (8, 12)]).eval()
    layer.add_adapter("a", rank=2)
    cast_frozen(nn.Sequential(layer), torch.bfloat16)
    with torch.no_grad():
        layer(torch.randn(2, 8))
    assert layer.base.weight.dtype == torch.bfloat16 and layer.merged_bytes() == 0
    plain = LoRALinear(nn.Linear(8, 12)).eval()
    plain.add_adapter("a", rank=2)
    plain.merge("a")
    with torch.no_grad():
        plain(torch.randn(2, 8))
    assert plain.merged_bytes() == 0


def test_cache_can_be_turned_off_and_on(randomize_lora):
    model = _model("timm_vit", randomize_lora)
    x = _images()
    with torch.no_grad():
        merged = model(x)
        cache_merged_weights(model, False)
        assert _merged_bytes(model) == 0
        torch.testing.assert_close(model(x), merged, **TOLERANCE)
        assert _merged_bytes(model) == 0
        cache_merged_weights(model, True)
        model(x)
    assert _merged_bytes(model) > 0
