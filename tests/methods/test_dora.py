"""DoRA (arXiv 2402.09353): the DESIGN.md invariants on tiny ViTs, a hand-written reference
for q+v segments of a fused qkv, Hugging Face PEFT's DoRA on a plain Linear, and a
transformers DINOv2 backbone."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from medpeft.adapters_io.export import merged_model
from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.errors import ConfigError
from medpeft.methods import DoraSettings, get_method
from medpeft.methods.dora.attach import add_dora, count_dora_parameters, dora_layers
from medpeft.methods.dora.layer import DoraLinear
from medpeft.methods.lora.attach import add_lora
from medpeft.model import ModelSpec, attach_method, build_model, wrap_backbone
from medpeft.routing import route
from tests.methods.conftest import BACKBONE, TINY

DORA = get_method("dora")
TRAINED = (".lora_A.", ".lora_B.", ".lora_magnitude.")


def _spec(**dora) -> ModelSpec:
    return ModelSpec(BACKBONE, 3, "dora", DoraSettings(**dora), img_size=32, model_kwargs=dict(TINY))


def _randomize(model: nn.Module, seed: int = 1) -> None:
    """Random B and magnitudes (B is zero and m = ||W0|| at init), so adapters act."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B." in name:  # "lora_B.<adapter>" on a bare layer, ".lora_B." in a model
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            if "lora_magnitude." in name:
                param.mul_(1 + 0.3 * torch.randn(param.shape, generator=generator))


def _layer(segments=None, rank: int = 3, alpha: float = 6.0, bias: bool = True) -> DoraLinear:
    torch.manual_seed(0)
    layer = DoraLinear(nn.Linear(16, 48, bias=bias), segments)
    layer.add_adapter("t", rank=rank, alpha=alpha)
    _randomize(layer)
    return layer


def reference_dora(x, linear, rows, a, b, m, scale):
    """Hand-written DoRA: build W' row by row (norm detached), then ``x W'^T + bias``."""
    weight = linear.weight.clone()
    for (start, stop), a_s, b_s, m_s in zip(rows, a, b, m):
        direction = linear.weight[start:stop] + scale * b_s @ a_s
        weight[start:stop] = m_s[:, None] * direction / direction.norm(dim=1, keepdim=True).detach()
    out = x @ weight.T
    return out if linear.bias is None else out + linear.bias


@pytest.mark.parametrize("segments, bias", [(None, True), ([(0, 16), (32, 48)], True), ([(16, 32)], False)])
def test_output_and_gradients_match_the_hand_written_weight(segments, bias):
    layer = _layer(segments, bias=bias)
    x = torch.randn(2, 5, 16)
    params = [layer.lora_A["t"], layer.lora_B["t"], layer.lora_magnitude["t"]]
    expected = reference_dora(x, layer.base, layer.segments, *params, scale=2.0)
    ours = layer(x)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(
        torch.autograd.grad(ours.square().sum(), params),
        torch.autograd.grad(expected.square().sum(), params),
    ):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


class _OneLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_plain_linear_matches_hugging_face_peft_dora():
    torch.manual_seed(0)
    net = _OneLinear()
    ours = DoraLinear(copy.deepcopy(net.fc))
    ours.add_adapter("default", rank=4, alpha=8.0)
    _randomize(ours)
    peft_model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["fc"], use_dora=True))
    theirs = peft_model.base_model.model.fc
    a, b, m = (ours.lora_A["default"], ours.lora_B["default"], ours.lora_magnitude["default"])
    with torch.no_grad():
        theirs.lora_A["default"].weight.copy_(a[0])
        theirs.lora_B["default"].weight.copy_(b[0])
        theirs.lora_magnitude_vector["default"].weight.copy_(m[0])
    x = torch.randn(3, 7, 16)
    expected, got = peft_model(x), ours(x)
    assert (got - expected).abs().max() <= 1e-5
    grads = torch.autograd.grad(got.square().sum(), [a, b, m])
    peft_params = [
        theirs.lora_A["default"].weight, theirs.lora_B["default"].weight,
        theirs.lora_magnitude_vector["default"].weight,
    ]
    for ours_grad, peft_grad in zip(grads, torch.autograd.grad(expected.square().sum(), peft_params)):
        torch.testing.assert_close(ours_grad[0], peft_grad, atol=1e-4, rtol=1e-4)


def test_fresh_adapter_leaves_the_model_unchanged(tiny_vit, images):
    plain = tiny_vit()
    adapted = copy.deepcopy(plain)
    add_dora(adapted)
    layers = dora_layers(adapted)
    assert list(layers) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    for layer in layers.values():
        assert torch.equal(layer.lora_B["default"], torch.zeros_like(layer.lora_B["default"]))
        torch.testing.assert_close(layer.lora_magnitude["default"].flatten(), layer.adapted_rows().norm(dim=1))
    with torch.no_grad():
        torch.testing.assert_close(adapted(images), plain(images), atol=1e-6, rtol=0)


def _trained(steps: int = 3) -> nn.Module:
    """A DoRA model after a few Adam steps on random labels (B and m off their init)."""
    torch.manual_seed(0)
    model = build_model(_spec()).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    images = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 1])
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


def test_merge_unmerge_after_training(images):
    model = _trained()
    layers = dora_layers(model)
    for layer in layers.values():
        assert layer.lora_B["default"].abs().sum() > 0
    weights = {n: layer.base.weight.clone() for n, layer in layers.items()}
    with torch.no_grad():
        unmerged = model(images)
        DORA.merge(model)
        merged = model(images)
        changed = [not torch.equal(layer.base.weight, weights[n]) for n, layer in layers.items()]
        DORA.unmerge(model)
        restored = model(images)
    assert all(changed)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    for name, layer in layers.items():
        assert torch.equal(layer.base.weight, weights[name])
    assert torch.equal(restored, unmerged)


def test_one_adapter_merged_at_a_time(images):
    model = _trained()
    add_dora(model, adapter_name="second")
    DORA.merge(model, "default")
    with pytest.raises(RuntimeError, match="merges one adapter at a time; unmerge 'default' first"):
        DORA.merge(model, "second")
    with route(adapters="second"), pytest.raises(RuntimeError, match="'default' is merged"):
        model(images)
    DORA.unmerge(model, "default")
    with torch.no_grad(), route(adapters="second"):
        model(images)


def test_only_adapter_and_head_get_gradients(images):
    model = build_model(_spec())
    _randomize(model)
    model(images).square().sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if any(t in n for t in TRAINED) or n.startswith("head.")}
    assert trainable == expected
    assert len(trainable) == 2 * 3 + 2  # A, B, magnitude in 2 blocks + head weight and bias
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_save_load_identical_logits(tmp_path, backbone_file, images):
    spec = _spec(targets=("q", "v", "mlp.fc1"), rank=2, alpha=8)
    model = build_model(spec, weights=backbone_file).eval()
    _randomize(model)
    save_adapter(model, tmp_path / "task", spec, ["a", "b", "c"], "multiclass")
    loaded, config = load_adapter(tmp_path / "task", weights=backbone_file)
    assert config.method == "dora" and config.to_spec() == spec
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))


def test_merged_export_is_a_plain_timm_model_with_the_same_logits(tmp_path, backbone_file, images):
    spec = _spec()
    model = build_model(spec, weights=backbone_file).eval()
    _randomize(model)
    folder = save_adapter(model, tmp_path / "task", spec, ["a", "b", "c"], "multiclass",
                          backbone_weights=backbone_file)
    plain, _ = merged_model(folder)
    assert not any(isinstance(m, DoraLinear) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(plain(images), model(images), atol=1e-5, rtol=1e-5)


def test_parameter_count_formula():
    model = build_model(_spec(targets=("q", "v", "mlp.fc1"), rank=4))
    dim, hidden, rank = 32, 128, 4
    per_qv_segment = rank * (dim + dim) + dim
    per_fc1 = rank * (dim + hidden) + hidden
    assert count_dora_parameters(model) == 2 * (2 * per_qv_segment + per_fc1)
    with torch.device("meta"):
        vit_b = build_model(ModelSpec("vit_base_patch16_224", 2, "dora", model_kwargs={"weight_init": "skip"}))
    assert count_dora_parameters(vit_b) == 12 * 2 * (4 * (768 + 768) + 768) == 165_888


def test_per_sample_adapters_are_refused(images):
    model = build_model(_spec()).eval()
    add_dora(model, adapter_name="second")
    with route(adapters=["default", "second"]), pytest.raises(ValueError, match="DoRA serves one adapter per batch"):
        model(images)


@pytest.mark.parametrize(
    "dora, message",
    [
        (dict(rank=0), r"^dora\.rank: expected an integer >= 1, got 0$"),
        (dict(alpha=-1), r"^dora\.alpha: expected a number > 0, got -1$"),
        (dict(targets=("mlp.fc3",)), r"^dora\.targets \['mlp\.fc3'\] match no layer"),
        (dict(blocks=(7,)), r"^dora\.targets: blocks \[7\] do not exist"),
    ],
)
def test_bad_settings_name_the_dora_section(dora, message):
    with pytest.raises(ConfigError, match=message):
        build_model(_spec(**dora))


def test_a_layer_holds_adapters_of_one_method():
    model = build_model(_spec())
    with pytest.raises(ConfigError, match=r"blocks\.0\.attn\.qkv already holds DoraLinear adapters; lora adapters"):
        add_lora(model, ("q", "v"), adapter_name="plain")
    assert list(dora_layers(model)["blocks.0.attn.qkv"].lora_A) == ["default"]


def test_dinov2_from_transformers():
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                          patch_size=8, mlp_ratio=2)
    base = wrap_backbone(Dinov2Model(config).eval(), num_classes=3)
    model = copy.deepcopy(base)
    attach_method(model, DORA, DoraSettings())
    layers = dora_layers(model)
    assert len(layers) == 4 and all(layer.covers_all for layer in layers.values())  # q and v Linears
    assert count_dora_parameters(model) == 4 * (4 * (32 + 32) + 32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), base(images), atol=1e-6, rtol=0)
    _randomize(model)
    model(images).square().sum().backward()
    assert all(layer.lora_magnitude["default"].grad.abs().sum() > 0 for layer in layers.values())
    with torch.no_grad():
        unmerged = model(images)
        DORA.merge(model)
        merged = model(images)
        DORA.unmerge(model)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(unmerged, base(images))
