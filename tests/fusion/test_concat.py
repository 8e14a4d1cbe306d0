"""MultiStreamViT: image modalities in one timm ViT stream."""

from __future__ import annotations

import pytest
import timm
import torch

from medpeft.errors import DataError
from medpeft.fusion.concat import MultiStreamViT

TINY = dict(depth=2, embed_dim=32, num_heads=2, patch_size=8, img_size=32)
PATCHES = 16


def _vit(seed: int = 0):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=3, **TINY).eval()


def _batch(present, shapes, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    images = {m: torch.randn(*shape, generator=generator) for m, shape in shapes.items()}
    return {"images": images, "present": torch.as_tensor(present, dtype=torch.bool)}


def test_one_modality_without_modality_embedding_equals_timm():
    vit = _vit()
    batch = _batch([[1], [1]], {"cxr": (2, 3, 32, 32)})
    with torch.no_grad():
        reference = vit(batch["images"]["cxr"])
        model = MultiStreamViT(vit, ["cxr"]).eval()
        model.modality_embed.zero_()
        torch.testing.assert_close(model(batch), reference)


def test_tokens_of_all_modalities_and_images_follow_one_cls():
    model = MultiStreamViT(_vit(), ["fundus", "oct", "mri"]).eval()
    shapes = {"fundus": (2, 3, 32, 32), "oct": (2, 3, 32, 32), "mri": (2, 4, 3, 32, 32)}
    batch = _batch([[1, 0, 1], [1, 1, 1]], shapes)
    assert model.embed(batch).shape == (2, 1 + PATCHES * (1 + 1 + 4), 32)
    assert model(batch).shape == (2, 3)


def test_modality_embeddings_distinguish_modalities():
    model = MultiStreamViT(_vit(), ["a", "b"]).eval()
    batch = _batch([[1, 1]] * 2, {"a": (2, 3, 32, 32), "b": (2, 3, 32, 32)})
    swapped = {**batch, "images": {"a": batch["images"]["b"], "b": batch["images"]["a"]}}
    with torch.no_grad():
        assert not torch.allclose(model(batch), model(swapped), atol=1e-4)
        model.modality_embed.zero_()  # without them the stream cannot tell a from b
        torch.testing.assert_close(model(batch), model(swapped), atol=1e-5, rtol=1e-4)


def test_missing_token_ignores_pixels_of_absent_images():
    model = MultiStreamViT(_vit(), ["a", "b"], missing_token=True).eval()
    batch = _batch([[1, 0], [1, 1]], {"a": (2, 3, 32, 32), "b": (2, 3, 32, 32)})
    with torch.no_grad():
        first = model(batch)
        batch["images"]["b"] = torch.randn(2, 3, 32, 32)
        second = model(batch)
    torch.testing.assert_close(first[0], second[0])
    assert not torch.allclose(first[1], second[1])


def test_missing_modality_key_is_a_data_error():
    model = MultiStreamViT(_vit(), ["a", "b"])
    with pytest.raises(DataError, match="'b'"):
        model(_batch([[1, 1]], {"a": (1, 3, 32, 32)}))
