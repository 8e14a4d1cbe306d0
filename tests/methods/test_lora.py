"""LoRA invariants (DESIGN.md) and the MeLo numbers of SPEC.md §1, on tiny ViTs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.errors import ConfigError
from medpeft.methods.layers import adapter_names, check_routed, count_parameters, delete_adapter
from medpeft.methods.lora.attach import (
    add_lora,
    count_adapter_parameters,
    lora_layers,
    merge_lora,
    unmerge_lora,
)
from medpeft.methods.lora.layer import LoRALinear
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route


def reference_qv(x, linear, a_q, b_q, a_v, b_v, scale):
    """Hand-written MeLo qkv: base Linear, plus scaled q and v low-rank deltas."""
    out = x @ linear.weight.T + linear.bias
    q_delta = scale * (x @ a_q.T @ b_q.T)
    v_delta = scale * (x @ a_v.T @ b_v.T)
    zeros = torch.zeros_like(q_delta)
    return out + torch.cat([q_delta, zeros, v_delta], dim=-1)


def qv_layer(rank: int = 4, alpha: float = 4.0, seed: int = 0) -> LoRALinear:
    torch.manual_seed(seed)
    layer = LoRALinear(nn.Linear(32, 96), [(0, 32), (64, 96)])
    layer.add_adapter("t", rank=rank, alpha=alpha)
    with torch.no_grad():
        layer.lora_B["t"].normal_()
    return layer


@pytest.mark.parametrize("rank, alpha", [(4, 4.0), (4, 2.0), (2, 8.0)])
def test_qv_layer_matches_reference(rank: int, alpha: float) -> None:
    layer = qv_layer(rank, alpha)
    x = torch.randn(2, 5, 32)
    a, b = layer.lora_A["t"], layer.lora_B["t"]
    expected = reference_qv(x, layer.base, a[0], b[0], a[1], b[1], alpha / rank)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_qv_gradients_match_reference() -> None:
    layer = qv_layer(rank=2, alpha=4.0)
    x = torch.randn(2, 5, 32)
    a, b = layer.lora_A["t"], layer.lora_B["t"]
    reference = reference_qv(x, layer.base, a[0], b[0], a[1], b[1], 2.0)
    ours = torch.autograd.grad(layer(x).square().sum(), [a, b])
    expected = torch.autograd.grad(reference.square().sum(), [a, b])
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


def test_whole_linear_matches_reference() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 64))
    layer.add_adapter("t", rank=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_B["t"].normal_()
    x = torch.randn(4, 32)
    a, b = layer.lora_A["t"][0], layer.lora_B["t"][0]
    expected = x @ layer.base.weight.T + layer.base.bias + 2.0 * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_scale_is_real_division() -> None:
    assert qv_layer(rank=4, alpha=2.0).scaling["t"] == 0.5  # MeLo's alpha // r would give 0
    assert qv_layer(rank=4, alpha=1.0).scaling["t"] == 0.25


def test_fresh_adapter_leaves_output_unchanged(tiny_vit, images) -> None:
    plain = tiny_vit()
    adapted = copy.deepcopy(plain)
    add_lora(adapted, ("q", "v"), rank=4, alpha=4.0)
    assert len(lora_layers(adapted)) == 2
    with torch.no_grad():
        assert torch.equal(adapted(images), plain(images))


def test_merge_unmerge_and_merged_forward(tiny_spec, randomize_lora, images) -> None:
    model = build_model(tiny_spec()).eval()
    randomize_lora(model)
    weights = {n: layer.base.weight.clone() for n, layer in lora_layers(model).items()}
    with torch.no_grad():
        unmerged = model(images)
        merge_lora(model)
        merged = model(images)
        layers = lora_layers(model)
        changed = [not torch.equal(layer.base.weight, weights[n]) for n, layer in layers.items()]
        unmerge_lora(model)
        restored = model(images)
    assert all(changed)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(restored, unmerged, atol=1e-5, rtol=1e-5)


def test_only_adapter_and_head_get_gradients(tiny_spec, randomize_lora, images) -> None:
    model = build_model(tiny_spec())
    randomize_lora(model)
    model(images).square().sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if ".lora_" in n or n.startswith("head.")}
    assert trainable == expected
    assert len(trainable) == 2 * 2 + 2
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    lora = count_adapter_parameters(model)
    assert count_parameters(model).trainable == lora + 3 * 32 + 3


def test_save_load_identical_logits(
    tmp_path, tiny_spec, randomize_lora, backbone_file, images
) -> None:
    spec = tiny_spec()
    model = build_model(spec, weights=backbone_file).eval()
    randomize_lora(model)
    save_adapter(model, tmp_path / "task", spec, ["a", "b", "c"], "multiclass")
    loaded, _ = load_adapter(tmp_path / "task", weights=backbone_file)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))


def test_vit_b16_qv_rank4_counts() -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = build_model(ModelSpec("vit_base_patch16_224", num_classes=2))
    assert count_adapter_parameters(model) == 12 * 2 * (768 * 4 + 4 * 768) == 147_456
    counts = count_parameters(model)
    assert counts.trainable == 147_456 + 768 * 2 + 2
    assert 0.16 < 100 * 147_456 / counts.total < 0.18


def test_any_linear_targets_on_a_block_subset(tiny_spec, randomize_lora) -> None:
    targets = ("qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    model = build_model(tiny_spec(targets=targets, rank=2, alpha=1.0, blocks=(1,)))
    layers = lora_layers(model)
    assert set(layers) == {f"blocks.1.{t}" if t != "qkv" else "blocks.1.attn.qkv" for t in targets}
    assert not any(isinstance(m, LoRALinear) for m in model.blocks[0].modules())
    assert all(layer.covers_all for layer in layers.values())
    expected = sum(2 * (layer.in_features + layer.out_features) for layer in layers.values())
    assert count_adapter_parameters(model) == expected
    randomize_lora(model)
    fc1 = layers["blocks.1.mlp.fc1"]
    x = torch.randn(3, 32)
    a, b = fc1.lora_A["default"][0], fc1.lora_B["default"][0]
    reference = x @ fc1.base.weight.T + fc1.base.bias + 0.5 * (x @ a.T @ b.T)
    torch.testing.assert_close(fc1(x), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "lora, message",
    [(dict(targets=("mlp.fc3",)), "mlp.fc3"), (dict(blocks=(7,)), r"blocks \[7\] do not exist.*0\.\.1")],
)
def test_unknown_target_is_a_clear_error(tiny_spec, lora, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(tiny_spec(**lora))


def test_adapters_on_one_layer_must_share_segments(tiny_spec) -> None:
    model = build_model(tiny_spec())  # q+v segments on every qkv
    with pytest.raises(ConfigError, match="already adapted on segments"):
        add_lora(model, ("qkv",), adapter_name="whole")


def test_duplicate_adapter_name_is_refused_before_any_change(tiny_spec) -> None:
    model = build_model(tiny_spec(targets=("q", "v"), blocks=(1,)))
    with pytest.raises(ConfigError, match=r"blocks\.1\.attn\.qkv already has .* 'default'"):
        add_lora(model, ("q", "v"), adapter_name="default")  # blocks 0 and 1; 1 has it
    assert list(lora_layers(model)) == ["blocks.1.attn.qkv"]


@pytest.mark.parametrize("segments", [[(0, 32), (64, 100)], [(-8, 0)], [(0, 32), (32, 48)]])
def test_bad_segments_are_refused(segments) -> None:
    with pytest.raises(ValueError, match="segments"):
        LoRALinear(nn.Linear(32, 96), segments)


def test_multiple_adapters_switch(tiny_vit, randomize_lora, images) -> None:
    plain = tiny_vit()
    model = copy.deepcopy(plain)
    add_lora(model, ("q", "v"), rank=4, alpha=4.0, adapter_name="tb")
    add_lora(model, ("q", "v"), rank=2, alpha=4.0, adapter_name="cells")
    randomize_lora(model)
    assert adapter_names(model) == ["tb", "cells"]
    layer = lora_layers(model)["blocks.0.attn.qkv"]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        outputs = {}
        for name, scale in [("tb", 1.0), ("cells", 2.0), ("tb", 1.0)]:
            with route(adapters=name):
                a, b = layer.lora_A[name], layer.lora_B[name]
                expected = reference_qv(x, layer.base, a[0], b[0], a[1], b[1], scale)
                torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
                outputs.setdefault(name, model(images))
                assert torch.equal(model(images), outputs[name])
        assert torch.equal(model(images), outputs["tb"])  # unrouted: the first adapter added
        delete_adapter(model, "tb")
        assert torch.equal(model(images), outputs["cells"])  # now the first
        delete_adapter(model, "cells")
        assert torch.equal(model(images), plain(images))
    assert not torch.allclose(outputs["tb"], outputs["cells"])
    with route(adapters="derm"), pytest.raises(ConfigError, match="derm"):
        check_routed(model)
