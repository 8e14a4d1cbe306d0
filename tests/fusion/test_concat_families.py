"""MultiStreamViT through the backbone interface: any family with a token stream, same numbers on timm."""

from __future__ import annotations

import timm
import torch
from open_clip.model import CLIPVisionCfg, _build_vision_tower
from transformers import Dinov2Config, Dinov2Model

from medpeft.fusion.concat import MultiStreamViT
from medpeft.methods import MoraSettings, get_method
from medpeft.model import attach_method

SHAPES = {"a": (2, 3, 32, 32), "b": (2, 3, 32, 32)}


def _batch(present: list[list[int]], seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = {m: torch.randn(*shape, generator=generator) for m, shape in SHAPES.items()}
    return {"images": images, "present": torch.as_tensor(present, dtype=torch.bool)}


def _reference(model: MultiStreamViT, batch: dict) -> torch.Tensor:
    """The stream written out with timm's internals: modality embeddings before ``norm_pre``."""
    vit, parts = model.vit, []
    for i, m in enumerate(model.modalities):
        x = vit._pos_embed(vit.patch_embed(batch["images"][m]))
        parts.append((x[:, :1], x[:, 1:] + model.modality_embed[i]))
    x = vit.norm_pre(torch.cat([parts[0][0], *(p for _, p in parts)], 1))
    for block in vit.blocks:
        x = block(x)
    return model.head(vit.forward_head(vit.norm(x), pre_logits=True))


def test_timm_clip_style_vit_with_a_norm_before_the_blocks_keeps_its_numbers():
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_clip_224", num_classes=3, depth=2, embed_dim=32, num_heads=2,
                            patch_size=8, img_size=32).eval()
    assert not isinstance(vit.norm_pre, torch.nn.Identity)
    model = MultiStreamViT(vit, ["a", "b"]).eval()
    batch = _batch([[1, 1], [1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model(batch), _reference(model, batch), atol=1e-5, rtol=0)


def _dinov2() -> torch.nn.Module:
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                          patch_size=8, mlp_ratio=2)
    return Dinov2Model(config).eval()


def _open_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = CLIPVisionCfg(layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32)
    return _build_vision_tower(16, cfg).eval()


def test_mora_on_transformers_and_open_clip_streams():
    for build in (_dinov2, _open_clip):
        model = MultiStreamViT(build(), ["a", "b"], num_classes=3).eval()
        batch = _batch([[1, 1], [1, 0]])
        with torch.no_grad():
            before = model(batch)
        attach_method(model, get_method("mora"), MoraSettings(rank=2), "default")
        with torch.no_grad():
            torch.testing.assert_close(model(batch), before)  # zero-init up-projections
            for p in model.parameters():
                if p.requires_grad and p.dim() == 3:  # MoRA's B_m
                    p.normal_()
            after = model(batch)
        assert after.shape == (2, 3) and not torch.allclose(after, before)
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any(".mora_A." in n for n in trainable) and any(".mora_B." in n for n in trainable)
        assert all(n.startswith(("head.", "modality_embed")) or ".mora_" in n for n in trainable)


def test_missing_tokens_hide_absent_pixels_in_every_family():
    for build in (_dinov2, _open_clip):
        model = MultiStreamViT(build(), ["a", "b"], missing_token=True, num_classes=3).eval()
        batch = _batch([[1, 0], [1, 1]])
        with torch.no_grad():
            first = model(batch)
            batch["images"]["b"] = torch.randn(2, 3, 32, 32)
            second = model(batch)
        torch.testing.assert_close(first[0], second[0])  # sample 0 lacks b: its pixels are unseen
        assert not torch.allclose(first[1], second[1])
