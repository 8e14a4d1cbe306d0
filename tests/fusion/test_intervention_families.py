"""Early intervention over transformers (ViTModel, Dinov2Model, CLIPVisionModel) and open_clip
backbones: copies, names, missing modalities, one training step, activation checkpointing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fixtures.families import OPEN_CLIP_CONFIG, write_open_clip

from medpeft.backbones.base import CapabilityError
from medpeft.checkpointing import backbone_blocks, disable_checkpointing, enable_checkpointing
from medpeft.fusion.intervention import EarlyIntervention, ei_loss
from medpeft.fusion.pooled import PooledClassifier
from medpeft.methods.lora import LoraSettings
from medpeft.model import ModelSpec, build_architecture, build_model

MODS = ("a", "b")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
BACKBONES = {
    "dinov2": dict(model_type="dinov2", mlp_ratio=2, **TINY),
    "vit": dict(model_type="vit", intermediate_size=64, **TINY),
    "clip": dict(model_type="clip_vision_model", intermediate_size=64, **TINY),
}
BLOCK_Q = {  # block 0's q Linear inside each family's backbone
    "dinov2": "encoder.layer.0.attention.q_proj",
    "vit": "layers.0.attention.q_proj",
    "clip": "encoder.layers.0.self_attn.q_proj",
    "open_clip": "transformer.resblocks.0.attn.in_proj",
}
FAMILIES = [*BACKBONES, "open_clip"]
PRESENT = torch.tensor([[True, True], [True, False], [False, True]])


def _spec(family: str, folder) -> ModelSpec:
    if family == "open_clip":
        return ModelSpec(write_open_clip(folder / "open_clip"), 3, "lora", LoraSettings(rank=2), kind="open_clip",
                         modalities=MODS, fusion="early_intervention")
    return ModelSpec(f"tiny-{family}", 3, "lora", LoraSettings(rank=2), kind="transformers", img_size=32,
                     modalities=MODS, fusion="early_intervention", model_kwargs=BACKBONES[family])


def _model(family: str, folder) -> EarlyIntervention:
    torch.manual_seed(0)
    model = build_model(_spec(family, folder))
    with torch.no_grad():  # LoRA's B starts at zero: make the adapters act
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    return model


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"images": {m: torch.randn(3, 3, 32, 32, generator=g) for m in MODS}, "present": PRESENT}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_copy_is_the_one_modality_model_with_lora_under_its_backbone(family, tmp_path):
    model = _model(family, tmp_path)
    assert isinstance(model, EarlyIntervention)
    copies = [f"{copy}.{m}" for copy in ("targets", "references") for m in MODS]
    assert list(model.backbone_views()) == [f"{name}.backbone" for name in copies]
    assert all(isinstance(model.get_submodule(name), PooledClassifier) for name in copies)
    states = [model.get_submodule(name).state_dict() for name in copies]
    frozen = [key for key in states[0] if "lora_" not in key]
    assert all(torch.equal(state[key], states[0][key]) for state in states[1:] for key in frozen)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert f"targets.b.backbone.{BLOCK_Q[family]}.lora_A.default" in trainable
    assert {"targets.a.head.weight", "references.b.head.bias", "gate.weight", "projectors.a_to_b.3.weight"} <= trainable
    assert not any(".backbone." in n and "lora_" not in n for n in trainable)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_missing_reference_leaves_the_target_as_its_one_modality_model(family, tmp_path):
    model = _model(family, tmp_path).eval()
    batch = _batch()
    with torch.no_grad():
        out = model(batch)
        alone = {m: model.targets[m](batch["images"][m]) for m in MODS}
    assert out.targets.shape == out.references.shape == (2, 3, 3) and out.fused.shape == (3, 3)
    # sample 1 lacks b, sample 2 lacks a: their targets get no (attended) intervention token
    torch.testing.assert_close(out.targets[0, 1], alone["a"][1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.targets[1, 2], alone["b"][2], atol=1e-5, rtol=0)
    assert (out.targets[0, 0] - alone["a"][0]).abs().max() > 1e-4  # sample 0 has b: it steers a
    assert out.gate[1, 1] == float("-inf") and out.gate[2, 0] == float("-inf")


@pytest.mark.parametrize("family", FAMILIES)
def test_one_training_step_moves_adapters_projectors_gate_and_heads_only(family, tmp_path):
    model = _model(family, tmp_path).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = ei_loss(model(_batch()), torch.tensor([0, 1, 2]), "multiclass")
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"gate.weight", "projectors.a_to_b.3.weight", "targets.b.head.weight", "references.a.head.weight",
            f"targets.a.backbone.{BLOCK_Q[family]}.lora_B.default"} <= moved
    assert all(p.requires_grad for n, p in model.named_parameters() if n in moved)


@pytest.mark.parametrize("family", ["dinov2", "open_clip"])
def test_checkpointing_every_copy_keeps_the_gradients(family, tmp_path):
    model = _model(family, tmp_path).eval()
    batch, labels = _batch(), torch.tensor([0, 1, 2])

    def grads() -> dict[str, torch.Tensor]:
        model.zero_grad()
        ei_loss(model(batch), labels, "multiclass").backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    assert enable_checkpointing(model) == 4 * 2  # two blocks in each of the 4 copies
    checkpointed = grads()
    disable_checkpointing(model)
    assert len(backbone_blocks(model)) == 8 and plain.keys() == checkpointed.keys()
    assert any("lora_A" in n for n in plain)
    assert max((plain[n] - checkpointed[n]).abs().max().item() for n in plain) <= 1e-6


def test_open_clip_custom_attention_blocks_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "qk_norm"
    folder.mkdir()
    config = copy.deepcopy(OPEN_CLIP_CONFIG)
    config["model_cfg"]["vision_cfg"]["qk_norm"] = True  # open_clip's own Attention: no key mask
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    spec = ModelSpec(f"local-dir:{folder}", 3, "lora", LoraSettings(rank=2), kind="open_clip", modalities=MODS,
                     fusion="early_intervention")
    with pytest.raises(CapabilityError) as error:
        build_architecture(spec)
    assert str(error.value) == (
        f"model.kind 'open_clip' (local-dir:{folder}: VisionTransformer (open_clip), family open_clip) takes one "
        "image modality with model.fusion: auto; model.fusion 'early_intervention' needs a backbone whose blocks "
        "take an attention mask (timm ViTs, transformers, open_clip ViTs) (see the capability table in "
        "docs/methods.md)"
    )


def test_a_biomedclip_like_tower_gets_tokens_of_its_trunk_width():
    """open_clip's TimmModel: 16-d projected features, 192-d trunk tokens; the timm trunk masks."""
    vision = dict(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, timm_pool="",
                  timm_proj="linear", image_size=224)
    torch.manual_seed(0)
    model = build_model(ModelSpec("biomedclip", 3, "lora", LoraSettings(rank=2), modalities=MODS,
                                  fusion="early_intervention", model_kwargs=dict(embed_dim=16, vision_cfg=vision)))
    projector = model.projectors["a_to_b"]
    assert (projector[0].normalized_shape, projector[3].out_features) == ((16,), 192)
    assert "targets.a.backbone.trunk.blocks.0.attn.qkv.lora_A.default" in dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    images = {m: torch.randn(2, 3, 224, 224, generator=g) for m in MODS}
    with torch.no_grad():
        out = model.eval()({"images": images, "present": torch.tensor([[True, True], [True, False]])})
        alone = model.targets["a"](images["a"])
    torch.testing.assert_close(out.targets[0, 1], alone[1], atol=1e-5, rtol=0)
    assert (out.targets[0, 0] - alone[0]).abs().max() > 1e-4
