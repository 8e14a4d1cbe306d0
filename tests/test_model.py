"""build_model: fusion per spec, methods, freezing rules and clear errors."""

from __future__ import annotations

import pytest

from medpeft.errors import ConfigError
from medpeft.fusion.concat import MultiStreamViT
from medpeft.fusion.vilt import ViltClassifier
from medpeft.methods import LoraSettings, MoraSettings, get_method
from medpeft.methods.lora.attach import count_adapter_parameters
from medpeft.model import ModelSpec, build_model

TIMM = dict(
    backbone="vit_tiny_patch16_224",
    img_size=32,
    model_kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=8),
)
MIXED = [[1, 1], [1, 0], [0, 1]]


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _vilt(vilt_config, method: str, **kwargs):
    spec = ModelSpec(
        None, 3, method, kind="vilt", modalities=["image", "text"],
        vilt_config=vilt_config.to_dict(), **kwargs,
    )
    return build_model(spec)


def test_lora_on_vilt_maps_q_v_to_query_value(vilt_config):
    model = _vilt(vilt_config, "lora")
    assert isinstance(model, ViltClassifier)
    assert count_adapter_parameters(model) == 2 * 2 * (32 * 4 + 4 * 32)  # blocks x {q, v}
    lora = {n for n in _trainable(model) if ".lora_" in n}
    assert {n.split(".")[-3] for n in lora} == {"query", "value"}


def test_linear_probe_trains_pooler_and_head_only(vilt_config):
    model = _vilt(vilt_config, "linear")
    assert all(n.startswith(("head.", "vilt.pooler.")) for n in _trainable(model))


def test_timm_stream_trains_modality_embeddings_and_head():
    spec = ModelSpec(num_classes=2, method="lora", settings=LoraSettings(), modalities=["a", "b"], **TIMM)
    model = build_model(spec)
    assert isinstance(model, MultiStreamViT)
    trainable = _trainable(model)
    new = {"modality_embed", "head.weight", "head.bias"}
    assert new <= trainable
    assert all(n in new or ".lora_" in n for n in trainable)


@pytest.mark.parametrize("method", ["lora", "mora", "linear"])
def test_trainable_set_is_prefixes_plus_method_rule(method):
    """The builder's freezing rule: the fusion's ``trained_prefixes`` or the method's own."""
    model = build_model(ModelSpec(num_classes=2, method=method, modalities=["a", "b"], **TIMM))
    rule = get_method(method)
    expected = {
        n for n, _ in model.named_parameters()
        if n.startswith(model.trained_prefixes) or rule.is_trainable(n)
    }
    assert _trainable(model) == expected


@pytest.mark.parametrize(
    ("kind", "modalities", "method", "message"),
    [
        ("clip", ["a"], "mora", r"model\.kind: 'clip' is not one of"),
        ("timm", ["a"], "adapter", r"method: 'adapter' is not one of"),
        ("timm", ["image", "text"], "mora", "imaging-only"),
    ],
    ids=["kind", "method", "text-on-timm"],
)
def test_bad_choices_are_config_errors(kind, modalities, method, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelSpec(num_classes=2, method=method, kind=kind, modalities=modalities, **TIMM))


def test_settings_of_another_method_are_a_config_error():
    with pytest.raises(ConfigError, match="method 'mora' takes MoraSettings, got LoraSettings"):
        ModelSpec(num_classes=2, method="mora", settings=LoraSettings(), **TIMM)
    assert ModelSpec(num_classes=2, method="mora", **TIMM).settings == MoraSettings()


def test_builder_grows_the_table_frozen_and_keeps_a_shorter_one(vilt_config, vilt_batch, long_text_batch):
    def table(max_text_len):
        model = _vilt(vilt_config, "mora", max_text_len=max_text_len)
        return model, model.vilt.embeddings.text_embeddings.position_embeddings.weight

    model, weight = table(80)
    assert weight.shape[0] == 80 and not weight.requires_grad
    assert model(long_text_batch(80)).shape == (3, 3)
    assert table(8)[1].shape[0] == 40
    assert table(None)[1].shape[0] == 40
    with pytest.raises(ConfigError, match="max_text_len"):
        table(0)
