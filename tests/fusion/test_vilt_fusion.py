"""ViltClassifier: block-by-block forward against transformers' ViltModel, tokens, clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers import ViltModel

from medpeft.errors import DataError
from medpeft.fusion.vilt import ViltClassifier, additive_mask, attend_with_prefix

MIXED = [[1, 1], [1, 0], [0, 1]]


@pytest.mark.parametrize("size", [32, 48])
def test_block_by_block_equals_vilt_model(vilt_config, vilt_batch, vilt_reference, size):
    torch.manual_seed(0)
    vilt = ViltModel(vilt_config).eval()
    model = ViltClassifier(vilt, num_classes=3).eval()
    batch = vilt_batch(MIXED, size=size)
    with torch.no_grad():
        ours = model.forward_features(batch)
        reference = vilt_reference(vilt, batch)
        logits = model(batch)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert logits.shape == (3, 3)


def test_attend_with_empty_prefix_equals_layer(vilt_config):
    torch.manual_seed(0)
    layer = ViltModel(vilt_config).encoder.layer[0].eval()
    x = torch.randn(2, 5, 32)
    bias = additive_mask(torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]), x.dtype)
    empty = x.new_zeros(2, 0, 32)
    with torch.no_grad():
        ours = attend_with_prefix(layer, x, bias, empty, empty)
        torch.testing.assert_close(ours, layer(x, bias)[0])


def test_several_images_append_tokens(vilt_config, vilt_batch):
    model = ViltClassifier(ViltModel(vilt_config), num_classes=2).eval()
    batch = vilt_batch(MIXED)
    tokens, mask = model.embed(batch)
    batch["images"]["image"] = torch.stack([batch["images"]["image"]] * 3, 1)
    stacked, _stacked_mask = model.embed(batch)
    text_len, per_image = 8, 1 + 16
    assert tokens.shape == (3, text_len + per_image, 32) and mask.shape == (3, text_len + per_image)
    assert stacked.shape == (3, text_len + 3 * per_image, 32)
    assert model(batch).shape == (3, 2)


def test_missing_token_ignores_pixels_of_absent_images(vilt_config, vilt_batch):
    torch.manual_seed(0)
    model = ViltClassifier(ViltModel(vilt_config), 2, missing_token=True).eval()
    batch = vilt_batch(MIXED)
    first = model(batch)
    batch["images"]["image"][2] = torch.randn(3, 32, 32)
    batch["images"]["image"][0] += 1.0
    second = model(batch)
    torch.testing.assert_close(first[2], second[2])
    assert not torch.allclose(first[0], second[0])


def test_batch_without_text_is_a_data_error(vilt_config, vilt_batch):
    model = ViltClassifier(ViltModel(vilt_config), 2)
    batch = vilt_batch(MIXED)
    del batch["text"]
    with pytest.raises(DataError, match="text"):
        model(batch)


def test_text_longer_than_the_table_is_a_data_error(vilt_config, vilt_batch, long_text_batch):
    model = ViltClassifier(ViltModel(vilt_config), num_classes=3)
    with pytest.raises(DataError, match="max_text_len=41"):
        model(long_text_batch(41))
