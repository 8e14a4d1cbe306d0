"""Single-stream fusion: one image modality on the plain timm ViT, names unchanged."""

from __future__ import annotations

import pytest
import timm
import torch

from medpeft.errors import DataError
from medpeft.fusion.single import as_single_stream
from medpeft.model import ModelSpec, build_model

BACKBONE = "vit_tiny_patch16_224"
TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8)


def _model(method: str = "lora", modality: str = "image"):
    torch.manual_seed(0)
    spec = ModelSpec(BACKBONE, 3, method, img_size=32, modalities=(modality,), model_kwargs=dict(TINY))
    return build_model(spec).eval()


def _randomize_lora(model) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator))


def test_batch_dict_and_plain_tensor_give_identical_logits():
    model = _model()
    _randomize_lora(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        from_tensor = model(x)
        from_batch = model({"images": {"image": x}, "present": torch.ones(2, 1, dtype=torch.bool)})
    assert from_tensor.shape == (2, 3)
    assert torch.equal(from_batch, from_tensor)


def test_keeps_timm_parameter_names():
    model = _model()
    assert isinstance(model, timm.models.vision_transformer.VisionTransformer)
    names = dict(model.named_parameters())
    assert {"blocks.0.attn.qkv.base.weight", "blocks.0.attn.qkv.lora_A.default", "head.weight"} <= set(names)
    assert not any(n.startswith(("vit.", "model.", "backbone.")) for n in names)
    plain = timm.create_model(BACKBONE, num_classes=3, img_size=32, **TINY)
    base = {n.replace(".base.", ".") for n in names if ".lora_" not in n}
    assert base == {n for n, _ in plain.named_parameters()}


def test_zero_init_lora_equals_the_plain_timm_model():
    model = _model()
    plain = timm.create_model(BACKBONE, num_classes=3, img_size=32, **TINY).eval()
    state = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
    plain.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))


def test_reads_its_own_modality_and_refuses_others():
    model = _model("linear", modality="cxr")
    x = torch.randn(1, 3, 32, 32)
    assert model({"images": {"cxr": x}, "present": torch.ones(1, 1, dtype=torch.bool)}).shape == (1, 3)
    with pytest.raises(DataError, match="'cxr'"):
        model({"images": {"image": x}, "present": torch.ones(1, 1, dtype=torch.bool)})
    with pytest.raises(DataError, match=r"\[B, K, 3, H, W\]"):
        model({"images": {"cxr": x[0]}})


def test_several_images_per_sample_max_pool_their_logits():
    model = _model("linear", modality="cxr").eval()
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        pooled = model({"images": {"cxr": x}, "present": torch.ones(2, 1, dtype=torch.bool)})
        each = torch.stack([model(x[:, k]) for k in range(3)], 1)
    torch.testing.assert_close(pooled, each.amax(1))


def test_wrapping_twice_keeps_one_subclass():
    model = _model("linear")
    cls = type(model)
    assert as_single_stream(model, "other") is model and type(model) is cls
    assert model.modalities == ("other",)
