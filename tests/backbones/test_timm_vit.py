"""timm ViT builder: names, local weights (safetensors / torch), resizing, clear errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from medpeft.backbones import build_vit
from medpeft.errors import ConfigError, WeightsError

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.mark.parametrize(
    "name", ["vit_base_patch16_224", "deit_base_patch16_224", "vit_base_patch14_reg4_dinov2",
             "vit_base_patch16_clip_224"],
)
def test_families_build_with_new_head(name):
    model = build_vit(name, num_classes=3, img_size=32, **TINY)
    assert model.head.out_features == 3
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_except_head(tmp_path, suffix):
    source = build_vit("vit_base_patch16_224", num_classes=5, img_size=32, **TINY)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / f"backbone{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"model": state}, path)
    model = build_vit("vit_base_patch16_224", num_classes=2, img_size=32, weights=path, **TINY)
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed, source.pos_embed)
    assert model.head.out_features == 2  # the checkpoint's 5-class head is not forced in


def test_position_embedding_interpolated_to_new_size(tmp_path):
    source = build_vit("vit_base_patch16_224", num_classes=2, img_size=32, **TINY)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_vit("vit_base_patch16_224", num_classes=2, img_size=64, weights=path, **TINY)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 32)
    torch.testing.assert_close(model.pos_embed[:, 0], source.pos_embed[:, 0])  # [CLS] position kept
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2)


def test_wrong_architecture_checkpoint_is_named(tmp_path):
    other = build_vit("vit_base_patch16_224", num_classes=2, img_size=32, patch_size=8, embed_dim=48,
                      depth=2, num_heads=2)
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match="other.safetensors"):
        build_vit("vit_base_patch16_224", num_classes=2, img_size=32, weights=path, **TINY)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        build_vit("vit_base_patch16_224", 2, img_size=32, weights=tmp_path / "nope.pth", **TINY)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="bad.bin"):
        build_vit("vit_base_patch16_224", 2, img_size=32, weights=bad, **TINY)


def test_offline_pretrained_says_how_to_pass_weights(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="--weights"):
        build_vit("vit_base_patch16_224", 2, img_size=32, pretrained=True, **TINY)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_vit("resnet_not_a_vit_xyz", 2)
