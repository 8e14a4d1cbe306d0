"""Activation checkpointing: equal gradients with routing carried into backward, names unchanged."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import timm
import torch
from fixtures.families import CONVNEXT, SWIN, write_open_clip
from torch import nn
from transformers import Dinov2Config, Dinov2Model

import medpeft
from medpeft import checkpointing
from medpeft.checkpointing import (
    backbone_blocks,
    disable_checkpointing,
    enable_checkpointing,
    is_checkpointed,
)
from medpeft.errors import ConfigError
from medpeft.fusion.intervention import EarlyIntervention
from medpeft.methods import LoraSettings, MoraSettings, MorSettings, get_method
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)
Loss = Callable[[nn.Module], torch.Tensor]


def _images(batch: int = 3, size: int = 32, seed: int = 7) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _randomize_trainable(model: nn.Module, seed: int = 1) -> None:
    """Random values for every trained tensor (LoRA/MoRA/MoR B are zero at init)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _build(method: str, settings=None, **spec) -> nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec("vit_tiny_patch16_224", 3, method, settings, img_size=32, model_kwargs=dict(TINY), **spec)
    model = build_model(spec).eval()
    _randomize_trainable(model)
    return model


def _grads(model: nn.Module, loss: Loss, checkpointed: bool) -> dict[str, torch.Tensor]:
    (enable_checkpointing if checkpointed else disable_checkpointing)(model)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)  # the same dropout masks in both runs
    loss(model).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _largest_difference(model: nn.Module, loss: Loss) -> float:
    plain, checkpointed = _grads(model, loss, False), _grads(model, loss, True)
    assert plain.keys() == checkpointed.keys() and plain
    assert any(g.abs().max() > 0 for g in plain.values())
    return max((plain[n] - checkpointed[n]).abs().max().item() for n in plain)


def _mora() -> tuple[nn.Module, Loss]:
    model = _build("mora", MoraSettings(), modalities=["a", "b", "c"])
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    batch = {"images": {m: _images(seed=i) for i, m in enumerate("abc")}, "present": present}
    return model, lambda net: net(batch).square().sum()


def _mixed_tasks() -> tuple[nn.Module, Loss]:
    model = _build("lora", LoraSettings(rank=4))
    get_method("lora").attach(model, LoraSettings(("q", "v", "mlp.fc1"), rank=2), "cells")
    _randomize_trainable(model, seed=2)
    images = _images()

    def loss(net: nn.Module) -> torch.Tensor:
        with route(adapters=["default", "cells", "cells"]):
            return net(images).square().sum()

    return model, loss


def _lora_timm() -> tuple[nn.Module, Loss]:
    model = _build("lora", LoraSettings(rank=4, dropout=0.5)).train()  # dropout: RNG replayed
    images = _images()
    return model, lambda net: net(images).square().sum()


def _lora_dinov2() -> tuple[nn.Module, Loss]:
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=28)
    model = medpeft.adapt(Dinov2Model(config), LoraSettings(rank=2), num_classes=3).model.eval()
    _randomize_trainable(model)
    images = _images(size=28)
    return model, lambda net: net(images).square().sum()


def _mor() -> tuple[nn.Module, Loss]:
    model = _build("mor", MorSettings(ranks=(2, 4)))
    images = _images()
    return model, lambda net: net(images).square().sum()


def _early_intervention() -> tuple[nn.Module, Loss]:
    """Stage two of EI: targets take intervention tokens, the second modality is missing for one sample."""
    vits = []
    for seed in range(4):
        torch.manual_seed(seed)
        vits.append(timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=16, **{**TINY, "patch_size": 8}))
    model = EarlyIntervention({"x": vits[0], "y": vits[1]}, {"x": vits[2], "y": vits[3]}).eval()
    present = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)
    batch = {"images": {m: _images(size=16, seed=i) for i, m in enumerate("xy")}, "present": present}

    def loss(net: nn.Module) -> torch.Tensor:
        out = net(batch)
        gate = out.gate.masked_fill(~out.present, 0)
        return out.logits.square().sum() + out.targets.square().sum() + out.references.square().sum() + gate.sum()

    return model, loss


def _lora_family(name: str, kwargs: dict, side: int, **lora) -> tuple[nn.Module, Loss]:
    torch.manual_seed(0)
    spec = ModelSpec(name, 3, "lora", LoraSettings(rank=2, **lora), img_size=side, model_kwargs=dict(kwargs))
    model = build_model(spec).eval()
    _randomize_trainable(model)
    images = _images(size=side)
    return model, lambda net: net(images).square().sum()


def _lora_open_clip(tmp_path) -> tuple[nn.Module, Loss]:
    torch.manual_seed(0)
    spec = ModelSpec(write_open_clip(tmp_path / "open_clip"), 3, "lora", LoraSettings(rank=2), kind="open_clip")
    model = build_model(spec).eval()
    _randomize_trainable(model)
    images = _images()
    return model, lambda net: net(images).square().sum()


FAMILIES = {"swin": lambda tmp: _lora_family(*SWIN), "open_clip": _lora_open_clip,
            "convnext": lambda tmp: _lora_family(*CONVNEXT, targets=("fc1", "fc2"))}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_checkpoints_each_block_with_equal_gradients(family, tmp_path):
    model, loss = FAMILIES[family](tmp_path)
    blocks = backbone_blocks(model)
    assert _largest_difference(model, loss) <= 1e-6
    assert len(blocks) >= 2 and all(is_checkpointed(block) for block in blocks)


CASES = {"lora-timm": _lora_timm, "lora-dinov2": _lora_dinov2, "mora-missing": _mora, "mor": _mor,
         "early-intervention": _early_intervention, "mixed-tasks": _mixed_tasks}


@pytest.mark.parametrize("case", CASES)
def test_gradients_equal_with_and_without_checkpointing(case):
    model, loss = CASES[case]()
    assert _largest_difference(model, loss) <= 1e-6


@pytest.mark.parametrize(("case", "failure"), [
    ("mora-missing", r"MoRABlockBranch ran without a modality presence mask"),  # recomputed unrouted
    ("mixed-tasks", r"different number of tensors was saved"),  # recomputed through the first adapter only
])
def test_without_carrying_the_routing_backward_recomputes_another_graph(case, failure, monkeypatch):
    monkeypatch.setattr(checkpointing, "carry_routing", lambda fn, captured: fn)
    model, loss = CASES[case]()
    _grads(model, loss, False)
    with pytest.raises(RuntimeError, match=failure):
        _grads(model, loss, True)


def test_every_block_is_wrapped_and_names_stay():
    model, _ = _mora()
    keys = list(model.state_dict())
    assert enable_checkpointing(model) == 2 == enable_checkpointing(model)  # idempotent
    assert all(is_checkpointed(block) for block in backbone_blocks(model))
    assert list(model.state_dict()) == keys
    assert [n for n, _ in model.named_modules()] == [n for n, _ in _mora()[0].named_modules()]
    disable_checkpointing(model)
    assert not any(is_checkpointed(block) or "forward" in vars(block) for block in backbone_blocks(model))


def test_no_gradient_no_checkpoint(monkeypatch):
    model, loss = _mor()
    enable_checkpointing(model)
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: pytest.fail("checkpointed without grad"))
    with torch.no_grad():
        loss(model)


def test_adapt_turns_it_on():
    adapted = medpeft.adapt(timm.create_model("vit_tiny_patch16_224", img_size=32, **TINY), activation_checkpointing=True)
    assert all(is_checkpointed(block) for block in adapted.model.blocks)
    assert not any(is_checkpointed(b) for b in medpeft.adapt(timm.create_model(
        "vit_tiny_patch16_224", img_size=32, **TINY)).model.blocks)


def test_a_model_without_backbone_blocks_is_named(vilt_config, monkeypatch):
    torch.manual_seed(0)
    spec = ModelSpec(None, 3, "lora", kind="vilt", modalities=["image", "text"], vilt_config=vilt_config.to_dict())
    vilt = build_model(spec)
    expected = r"activation checkpointing: ViltClassifier has no backbone blocks medpeft can checkpoint \(timm"
    with pytest.raises(ConfigError, match=expected):
        enable_checkpointing(vilt)
    monkeypatch.setattr(checkpointing, "available_bytes", lambda device: 0)  # any estimate exceeds it
    assert not checkpointing.wants_checkpointing("auto", vilt, 2, 32, torch.device("cpu"))  # auto: off


def test_the_activation_estimate_counts_batch_tokens_width_and_blocks():
    model, _ = _mor()  # 2 blocks of width 32; 32 px -> (32 // 16) ** 2 = 4 tokens
    assert checkpointing.activation_bytes(model, batch_size=2, img_size=32) == 2 * 4 * 32 * 2 * 30
    mora, _ = _mora()  # three modalities in one stream
    assert checkpointing.activation_bytes(mora, batch_size=2, img_size=32) == 3 * 2 * 4 * 32 * 2 * 30


@pytest.mark.parametrize(("free", "expected"), [(10**12, False), (2 * 15360 - 2, True), (None, False)])
def test_auto_turns_on_when_activations_exceed_half_the_free_memory(free, expected, monkeypatch):
    model, _ = _mor()
    monkeypatch.setattr(checkpointing, "available_bytes", lambda device: free)
    cpu = torch.device("cpu")
    assert checkpointing.wants_checkpointing("auto", model, 2, 32, cpu) is expected
    assert checkpointing.wants_checkpointing(True, model, 2, 32, cpu) and not checkpointing.wants_checkpointing(
        False, model, 2, 32, cpu)


def test_the_host_memory_is_read_for_the_cpu():
    assert checkpointing.available_bytes(torch.device("cpu")) > 0


def _saved_bytes(model: nn.Module, loss: Loss) -> int:
    """Bytes of the tensors autograd keeps for backward outside the checkpointed blocks."""
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss(model)
    return sum(saved)


def test_checkpointed_blocks_keep_no_activations_for_backward():
    model, loss = _mor()
    plain = _saved_bytes(model, loss)
    enable_checkpointing(model)
    assert _saved_bytes(model, loss) < plain / 2


def test_a_deep_copy_checkpoints_its_own_blocks():
    model, loss = _mixed_tasks()
    enable_checkpointing(model)
    twin = copy.deepcopy(model)
    assert all(vars(b)["forward"].__self__ is b for b in backbone_blocks(twin))
    assert _largest_difference(twin, loss) <= 1e-6
    assert all(p.grad is None for p in model.parameters())  # the copy's backward reached the copy only
