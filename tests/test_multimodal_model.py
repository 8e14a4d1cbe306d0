"""build_multimodal_model: methods, freezing rules and clear errors."""

from __future__ import annotations

import pytest

from medpeft.adapters.inject import count_adapter_parameters
from medpeft.errors import ConfigError
from medpeft.model import LoraSettings
from medpeft.multimodal_model import build_multimodal_model

TIMM = dict(
    backbone="vit_tiny_patch16_224",
    model_kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=8, img_size=32),
)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_on_vilt_maps_q_v_to_query_value(vilt_config):
    model = build_multimodal_model("vilt", ["image", "text"], 3, "lora", vilt_config=vilt_config)
    assert count_adapter_parameters(model) == 2 * 2 * (32 * 4 + 4 * 32)  # blocks x {q, v}
    lora = {n for n in _trainable(model) if ".lora_" in n}
    assert {n.split(".")[-3] for n in lora} == {"query", "value"}


def test_linear_probe_trains_pooler_and_head_only(vilt_config):
    model = build_multimodal_model("vilt", ["image", "text"], 3, "linear", vilt_config=vilt_config)
    assert all(n.startswith(("head.", "vilt.pooler.")) for n in _trainable(model))


def test_timm_stream_trains_modality_embeddings_and_head():
    model = build_multimodal_model("timm", ["a", "b"], 2, "lora", lora=LoraSettings(), **TIMM)
    trainable = _trainable(model)
    new = {"modality_embed", "head.weight", "head.bias"}
    assert new <= trainable
    assert all(n in new or ".lora_" in n for n in trainable)


@pytest.mark.parametrize(
    ("kind", "modalities", "method", "message"),
    [
        ("clip", ["a"], "mora", "kind must be"),
        ("timm", ["a"], "adapter", "method one of"),
        ("timm", ["image", "text"], "mora", "imaging-only"),
    ],
)
def test_bad_choices_are_config_errors(kind, modalities, method, message):
    with pytest.raises(ConfigError, match=message):
        build_multimodal_model(kind, modalities, 2, method, **TIMM)
