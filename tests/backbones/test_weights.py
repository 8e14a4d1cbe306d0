"""Backbone weights are all-or-error: known non-encoder tensors are left out by name (and logged),
anything else the model lacks, and any encoder tensor the checkpoint lacks, is a WeightsError."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, _build_vision_tower
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2Model, ViltForMaskedLM, ViTConfig, ViTForImageClassification

from medpeft.backbones import build_vit
from medpeft.backbones.library import build_transformers, load_tower_weights
from medpeft.backbones.vilt import build_vilt
from medpeft.backbones.weights import fit_state_dict
from medpeft.errors import WeightsError

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               image_size=32, patch_size=8)
MAE_DECODER = {
    "mask_token": (1, 1, 32),
    "decoder_embed.weight": (16, 32),
    "decoder_embed.bias": (16,),
    "decoder_pos_embed": (1, 17, 16),
    "decoder_blocks.0.norm1.weight": (16,),
    "decoder_blocks.0.norm1.bias": (16,),
    "decoder_norm.weight": (16,),
    "decoder_pred.weight": (192, 16),
}


def _dropped_line(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if "not part of the encoder" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def _retfound_style(path: Path, extra: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """A tiny MAE checkpoint as RETFound ships it: {'model': encoder + decoder_* + mask_token}; the encoder."""
    torch.manual_seed(3)
    encoder = build_vit("vit_large_patch16_224", 5, img_size=32, **TINY).state_dict()
    encoder = {k: v for k, v in encoder.items() if not k.startswith("head.")}
    shapes = {**MAE_DECODER, **(extra or {})}
    torch.save({"model": {**encoder, **{k: torch.randn(s) for k, s in shapes.items()}}, "epoch": 799}, path)
    return encoder


def test_an_mae_checkpoint_loads_its_encoder_and_names_the_decoder_left_out(tmp_path, caplog):
    path = tmp_path / "RETFound_mae.pth"
    encoder = _retfound_style(path)
    with caplog.at_level(logging.INFO, logger="medpeft"):
        model = build_vit("vit_large_patch16_224", 2, img_size=32, weights=path, **TINY)
    own = model.state_dict()
    for key, value in encoder.items():
        assert torch.equal(own[key], value), key
    line = _dropped_line(caplog)
    assert str(path) in line and "left out 8 tensor(s)" in line
    for group in ("mask_token (1)", "decoder_blocks.* (2)", "decoder_embed.* (2)", "decoder_pos_embed (1)",
                  "decoder_norm.* (1)", "decoder_pred.* (1)"):
        assert group in line


def test_an_unknown_extra_tensor_or_a_missing_encoder_tensor_is_refused(tmp_path):
    extra = tmp_path / "extra.pth"
    _retfound_style(extra, {"projector.weight": (8, 32)})
    with pytest.raises(WeightsError) as error:
        build_vit("vit_large_patch16_224", 2, img_size=32, weights=extra, **TINY)
    assert "1 of its tensors is not in the model (projector.weight)" in str(error.value)
    assert "decoder" not in str(error.value)  # known decoder tensors are no error

    encoder = build_vit("vit_large_patch16_224", 5, img_size=32, **TINY).state_dict()
    for key in ("blocks.1.norm1.weight", "blocks.1.norm1.bias"):
        del encoder[key]
    missing = tmp_path / "missing.safetensors"
    save_file({k: v.contiguous() for k, v in encoder.items()}, str(missing))
    with pytest.raises(WeightsError) as error:
        build_vit("vit_large_patch16_224", 2, img_size=32, weights=missing, **TINY)
    message = str(error.value)
    assert str(missing) in message and "\n" not in message
    assert "2 of the model's 32 tensors are not in it (blocks.1.norm1.bias, blocks.1.norm1.weight)" in message


def test_the_mask_token_timm_drops_for_dinov2_is_named_in_the_log(tmp_path, caplog):
    source = build_vit("vit_small_patch14_dinov2", 3, img_size=28, **{**TINY, "patch_size": 14})
    state = {k: v.contiguous() for k, v in source.state_dict().items() if not k.startswith("head.")}
    state["mask_token"] = torch.zeros(1, 32)
    save_file(state, str(tmp_path / "dinov2.safetensors"))
    with caplog.at_level(logging.INFO, logger="medpeft"):
        model = build_vit("vit_small_patch14_dinov2", 3, img_size=28, weights=tmp_path / "dinov2.safetensors",
                          **{**TINY, "patch_size": 14})
    torch.testing.assert_close(model.blocks[1].ls1.gamma, source.blocks[1].ls1.gamma)
    assert "mask_token (1)" in _dropped_line(caplog)


def test_a_classifier_norm_the_model_does_not_pool_with_is_left_out_but_one_it_uses_loads(caplog):
    own = {"norm.weight": torch.ones(4), "fc_norm.weight": torch.ones(4)}
    state = {"norm.weight": torch.full((4,), 2.0), "fc_norm.weight": torch.full((4,), 3.0)}
    assert fit_state_dict(state, own, "ckpt", "timm").keys() == {"norm.weight", "fc_norm.weight"}
    with caplog.at_level(logging.INFO, logger="medpeft"):
        kept = fit_state_dict(state, {"norm.weight": torch.ones(4)}, "ckpt", "timm")
    assert kept.keys() == {"norm.weight"} and "fc_norm.* (1)" in _dropped_line(caplog)


def test_timm_pretrained_weights_are_all_or_error_too(tmp_path, caplog):
    """timm loads hub weights without ``strict`` when the classifier is new: what it leaves at
    init is an error. A local file as the pretrained source (``pretrained_cfg_overlay``) takes
    timm's hub loading path offline."""
    source = build_vit("vit_base_patch16_224", 1000, img_size=32, **TINY)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file({**state, "decoder_pred.weight": torch.zeros(4, 4)}, str(tmp_path / "hub.safetensors"))
    hub = dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "hub.safetensors")), **TINY)
    with caplog.at_level(logging.INFO, logger="medpeft"):
        model = build_vit("vit_base_patch16_224", 2, img_size=32, **hub)
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert "vit_base_patch16_224 (pretrained weights): left out 1 tensor(s)" in _dropped_line(caplog)
    with pytest.raises(WeightsError) as error:  # avg pooling adds fc_norm and drops the trained norm
        build_vit("vit_base_patch16_224", 2, img_size=32, global_pool="avg", **hub)
    assert ("2 of the model's 32 tensors are not in it (fc_norm.bias, fc_norm.weight); 2 of its tensors are "
            "not in the model (norm.bias, norm.weight)") in str(error.value)
    with pytest.raises(WeightsError, match="do not match the model .*size mismatch for cls_token") as error:
        build_vit("vit_base_patch16_224", 2, img_size=32, **{**hub, "embed_dim": 48})
    assert "\n" not in str(error.value)


def test_vilt_given_a_dinov2_folder_is_refused_naming_both_kinds(tmp_path):
    Dinov2Model(Dinov2Config(**HF_TINY)).save_pretrained(tmp_path / "dinov2")
    with pytest.raises(WeightsError) as error:
        build_vilt(weights=tmp_path / "dinov2")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'dinov2'} does not match the backbone: a dinov2 checkpoint given "
                              "to model.kind vilt; ")
    assert "of the model's 46 tensors are not in it (embeddings.text_embeddings." in message


def test_vilt_task_heads_are_left_out_and_logged(tmp_path, caplog, vilt_config):
    source = ViltForMaskedLM(vilt_config)
    source.save_pretrained(tmp_path / "mlm")
    with caplog.at_level(logging.INFO, logger="medpeft"):
        vilt = build_vilt(weights=tmp_path / "mlm")
    for key, value in source.vilt.state_dict().items():
        torch.testing.assert_close(vilt.state_dict()[key], value)
    assert "mlm_score.* (5)" in _dropped_line(caplog)


def test_a_transformers_classifier_folder_loads_its_encoder_but_not_a_partial_one(tmp_path, caplog):
    source = ViTForImageClassification(ViTConfig(**HF_TINY, num_labels=3))
    source.save_pretrained(tmp_path / "vit")
    with caplog.at_level(logging.INFO, logger="medpeft"):
        model = build_transformers("vit", weights=tmp_path / "vit")
    for key, value in source.vit.state_dict().items():  # no pooler: the family does not use it
        torch.testing.assert_close(model.state_dict()[key], value)
    assert "classifier.* (2)" in _dropped_line(caplog)

    file = tmp_path / "vit" / "model.safetensors"
    state = load_file(str(file))
    del state["vit.layernorm.weight"]
    save_file(state, str(file), metadata={"format": "pt"})
    with pytest.raises(WeightsError, match=r"1 of the model's \d+ tensors is not in it \(layernorm.weight\)"):
        build_transformers("vit", weights=tmp_path / "vit")


def test_a_transformers_folder_of_other_sizes_is_one_line(tmp_path):
    Dinov2Model(Dinov2Config(**HF_TINY)).save_pretrained(tmp_path / "dinov2")
    with pytest.raises(WeightsError) as error:  # transformers raised a RuntimeError after its report
        build_transformers("dinov2", weights=tmp_path / "dinov2", mlp_ratio=2)
    assert "tensor shapes do not match the model: encoder.layer." in str(error.value)


def test_a_whole_clip_checkpoint_loads_the_tower_and_names_the_text_tower(tmp_path, caplog):
    vision = CLIPVisionCfg(layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=2, layers=1)
    torch.manual_seed(0)
    clip = CLIP(16, vision, text)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    tower = _build_vision_tower(16, vision)
    with caplog.at_level(logging.INFO, logger="medpeft"):
        load_tower_weights(tower, tmp_path / "clip.safetensors")
    for key, value in clip.visual.state_dict().items():
        torch.testing.assert_close(tower.state_dict()[key], value)
    line = _dropped_line(caplog)
    assert "transformer.* (" in line and "token_embedding.* (1)" in line and "logit_scale (1)" in line

    state = {**clip.state_dict(), "teacher_head.weight": torch.zeros(2)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(WeightsError, match=r"not in the model \(teacher_head.weight\)"):
        load_tower_weights(tower, tmp_path / "odd.safetensors")
