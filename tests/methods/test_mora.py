"""MoRA: per-sample modality selection, invariants, parameter counts (SPEC section 2)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import ViltConfig, ViltModel

from medpeft.errors import ConfigError
from medpeft.fusion.concat import MultiStreamViT
from medpeft.methods import MoraSettings
from medpeft.methods.layers import count_parameters, delete_adapter
from medpeft.methods.lora.layer import LoRALinear
from medpeft.methods.mora.attach import count_mora_parameters, mora_layers
from medpeft.methods.mora.layer import MoRABlockBranch, MoRALinear
from medpeft.model import ModelSpec, build_model
from medpeft.routing import current, route

MODALITIES = ["image", "text"]
MIXED = [[1, 1], [1, 0], [0, 1], [1, 1]]
TINY_TIMM = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)


def _randomize_mora(model: nn.Module, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".mora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator))


def _vilt_mora(
    config: ViltConfig, seed: int = 0, mora: MoraSettings | None = None, weights=None
) -> nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec(
        None, 3, "mora", mora, kind="vilt", modalities=MODALITIES, vilt_config=config.to_dict()
    )
    return build_model(spec, weights=weights).eval()


def _timm_mora(modalities, num_classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    spec = ModelSpec(
        "vit_tiny_patch16_224", num_classes, "mora", img_size=32, modalities=modalities,
        model_kwargs=dict(TINY_TIMM),
    )
    return build_model(spec).eval()


def _row(batch: dict, i: int) -> dict:
    """Sample ``i`` of a batch dict as a batch of one."""
    if isinstance(batch, torch.Tensor):
        return batch[i : i + 1]
    return {k: _row(v, i) for k, v in batch.items()}


def _manual_layer() -> MoRALinear:
    torch.manual_seed(0)
    layer = MoRALinear(nn.Linear(8, 6))
    layer.add_adapter("default", ["a", "b", "c"], rank=2)
    _randomize_mora(layer)
    return layer


def test_each_sample_uses_the_up_projections_of_its_modalities():
    layer = _manual_layer()
    a, b = layer.mora_A["default"], layer.mora_B["default"]
    x = torch.randn(4, 5, 8)
    present = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool)
    with torch.no_grad(), route(presence=present):
        out = layer(x)
        for i, row in enumerate(present):
            up = sum(b[m] for m in range(3) if row[m])
            expected = layer.base(x[i]) + x[i] @ a.T @ up.T
            torch.testing.assert_close(out[i], expected)


def test_fixed_pattern_equals_lora_with_summed_up_projection():
    layer = _manual_layer()
    pattern = [True, False, True]
    lora = LoRALinear(layer.base)
    lora.add_adapter("default", rank=2, alpha=2.0)  # scale 1: MoRA has no scaling
    b = layer.mora_B["default"]
    with torch.no_grad():
        lora.lora_A["default"].copy_(layer.mora_A["default"][None])
        lora.lora_B["default"].copy_((b[0] + b[2])[None])
        x = torch.randn(3, 4, 8)
        with route(presence=torch.tensor([pattern] * 3)):
            torch.testing.assert_close(layer(x), lora(x))
        merged = layer.delta_weight("default", pattern)
        torch.testing.assert_close(merged, lora.delta_weight("default"))


def test_layer_without_mask_raises():
    layer = _manual_layer()
    with pytest.raises(RuntimeError, match=r"route\(presence=\.\.\.\)"):
        layer(torch.randn(2, 8))
    with route(presence=torch.ones(2, 3, dtype=torch.bool)):
        layer(torch.randn(2, 8))
    assert current().presence is None  # restored on exit
    with pytest.raises(RuntimeError, match=r"route\(presence=\.\.\.\)"):
        layer(torch.randn(2, 8))


def test_batch_run_without_routed_presence_raises():
    """Outside the fusion models' forward, a MoRA model needs `route(presence=...)`."""
    model = _timm_mora(["image"])
    _randomize_mora(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"route\(presence=\.\.\.\)"):
            model(x)  # a plain tensor carries no presence mask
        with route(presence=torch.ones(2, 1, dtype=torch.bool)):
            routed = model(x)
        batch = model({"images": {"image": x}, "present": torch.ones(2, 1, dtype=torch.bool)})
    torch.testing.assert_close(routed, batch)


def test_vilt_blocks_without_routed_presence_raise(vilt_config, vilt_batch):
    model = _vilt_mora(vilt_config)
    batch = vilt_batch(MIXED)
    tokens, mask = model.embed(batch)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"route\(presence=\.\.\.\)"):
            model.encode(tokens, mask)
        with route(presence=batch["present"]):
            x, _ = model.encode(tokens, mask)
    pooled = model.vilt.pooler(model.vilt.layernorm(x))
    torch.testing.assert_close(pooled, model.forward_features(batch))


def test_mixed_batch_equals_separate_forwards(vilt_config, vilt_batch):
    model = _vilt_mora(vilt_config)
    _randomize_mora(model)
    batch = vilt_batch(MIXED)
    with torch.no_grad():
        mixed = model(batch)
        for i in range(len(MIXED)):
            torch.testing.assert_close(model(_row(batch, i))[0], mixed[i], atol=1e-5, rtol=1e-4)


def test_presence_changes_the_update(vilt_config, vilt_batch):
    model = _vilt_mora(vilt_config)
    _randomize_mora(model)
    batch = vilt_batch([[1, 1]] * 2)
    with torch.no_grad():
        complete = model(batch)
        batch["present"] = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)  # same tensors, other B
        assert not torch.allclose(model(batch), complete)


def test_zero_init_equals_base_model(vilt_config, vilt_batch):
    model = _vilt_mora(vilt_config)
    batch = vilt_batch(MIXED)
    with torch.no_grad():
        adapted = model(batch)
        with route(adapters="other"), pytest.raises(ConfigError, match=r"\['other'\]; the model has \['default'\]"):
            model(batch)
        delete_adapter(model, "default")  # every MoRA branch gone: the base model
        torch.testing.assert_close(model(batch), adapted)


def test_only_mora_pooler_and_head_get_gradients(vilt_config, vilt_batch):
    model = _vilt_mora(vilt_config).train()
    model(vilt_batch(MIXED)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    assert all(".mora_" in n or n.startswith(("head.", "vilt.pooler.")) for n in trainable)
    assert any(".mora_B." in n for n in trainable)
    assert any(n.startswith("vilt.pooler.") for n in trainable)


def test_save_load_gives_identical_logits(vilt_config, vilt_batch, tmp_path: Path):
    backbone = tmp_path / "vilt.safetensors"
    torch.manual_seed(5)
    state = ViltModel(vilt_config).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(backbone))
    trained = _vilt_mora(vilt_config, seed=0, weights=backbone)
    _randomize_mora(trained)
    adapter = {n: p.detach().contiguous() for n, p in trained.named_parameters() if p.requires_grad}
    save_file(adapter, str(tmp_path / "adapter.safetensors"))
    fresh = _vilt_mora(vilt_config, seed=1, weights=backbone)
    result = fresh.load_state_dict(load_file(str(tmp_path / "adapter.safetensors")), strict=False)
    assert not result.unexpected_keys
    batch = vilt_batch(MIXED)
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch), trained(batch))


def test_vilt_b_counts_match_the_paper():
    with torch.device("meta"):
        model = build_model(ModelSpec(None, 8, "mora", kind="vilt", modalities=MODALITIES))
    counts = count_parameters(model)
    assert count_mora_parameters(model) == 768 * 4 + 2 * 4 * 768 == 9_216
    head = (768 * 1536 + 1536) + 2 * 1536 + (1536 * 8 + 8)
    assert counts.trainable == 9_216 + (768 * 768 + 768) + head == 1_796_360
    assert 1.55 < counts.percent < 1.6


@pytest.mark.parametrize(("blocks", "targets", "layers", "width"), [
    ((0,), None, 1, (32, 32)),
    ((0, 1), None, 2, (32, 32)),
    (None, ("attention.query", "attention.value"), 4, (32, 32)),
    ((1,), ("intermediate.dense",), 1, (32, 64)),
])
def test_count_formula_on_tiny_vilt(vilt_config, blocks, targets, layers, width):
    mora = MoraSettings(rank=4, blocks=blocks, targets=targets)
    model = _vilt_mora(vilt_config, mora=mora)
    dim_in, dim_out = width
    assert len(mora_layers(model)) == layers
    assert count_mora_parameters(model) == layers * (dim_in * 4 + 2 * 4 * dim_out)
    kind = MoRABlockBranch if targets is None else MoRALinear
    assert all(isinstance(layer, kind) for layer in mora_layers(model).values())


def test_three_modalities_select_per_sample():
    model = _timm_mora(["a", "b", "c"])
    assert isinstance(model, MultiStreamViT)
    assert count_mora_parameters(model) == 32 * 4 + 3 * 4 * 32
    _randomize_mora(model)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    images = {m: torch.randn(3, 3, 32, 32) for m in "abc"}
    batch = {"images": images, "present": present}
    mixed = model(batch)
    for i in range(3):
        torch.testing.assert_close(model(_row(batch, i))[0], mixed[i], atol=1e-5, rtol=1e-4)
    model.zero_grad()
    model({"images": images, "present": present[1:2].expand(3, -1)}).sum().backward()
    grad_b = model.vit.blocks[0].mora_B["default"].grad
    assert grad_b[1].abs().sum() == 0 and grad_b[0].abs().sum() > 0  # b absent: B_b untouched


def test_a_model_with_block_branches_is_still_read_by_its_family():
    spec = ModelSpec("vit_tiny_patch16_224", 3, "mora", MoraSettings(blocks=(0,)), img_size=16,
                     modalities=("a", "b"), model_kwargs=dict(TINY_TIMM))
    model = build_model(spec)
    assert isinstance(model.vit.blocks[0], MoRABlockBranch)
    view = model.backbone_views()["vit"]
    assert view.block_names() == ["blocks.0", "blocks.1"]
    assert view.attention(0)["q"].module == "blocks.0.attn.qkv"
    assert model.vit.get_submodule("blocks.0.attn.qkv") is model.vit.blocks[0].base.attn.qkv
