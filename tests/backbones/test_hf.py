"""The ``transformers`` family on tiny random-init ViT (Phikon), DINOv2 (RAD-DINO) and CLIP vision models."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch
from fixtures.families import DINOV2_INPUT, DINOV2_PROCESSOR, save_dinov2
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    ViltModel,
    ViTConfig,
    ViTModel,
)

from medpeft.backbones.base import CLIP_MEAN_STD, IMAGENET_MEAN_STD, describe
from medpeft.backbones.hf import HALF_MEAN_STD, PROCESSOR_FILE
from medpeft.backbones.library import build_transformers
from medpeft.errors import ConfigError
from tests.backbones.contract import (
    check_attention_weights,
    check_masked_stream,
    check_native_checkpoint_loads,
    check_perturbation_reaches_output,
    check_prepare,
    check_token_feature_map,
    check_token_stream,
    projection_linears,
)

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
REGISTERS = 2


def _builder(model: type[nn.Module], config: type, **fields) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return model(config(**TINY, **fields)).eval()

    return build


BUILDERS = {
    "vit": _builder(ViTModel, ViTConfig, intermediate_size=64),
    "dinov2": _builder(Dinov2Model, Dinov2Config, mlp_ratio=2),
    "dinov2_swiglu": _builder(Dinov2Model, Dinov2Config, mlp_ratio=2, use_swiglu_ffn=True),
    "dinov2_registers": _builder(
        Dinov2WithRegistersModel, Dinov2WithRegistersConfig, mlp_ratio=2, num_register_tokens=REGISTERS
    ),
    "clip": _builder(CLIPVisionModel, CLIPVisionConfig, intermediate_size=64),
}
# block 1's q and out Linears, and the library's own pooled features
ROLES = {
    "vit": ("layers.1.attention.q_proj", "layers.1.attention.o_proj"),
    "dinov2": ("encoder.layer.1.attention.q_proj", "encoder.layer.1.attention.o_proj"),
    "dinov2_swiglu": ("encoder.layer.1.attention.q_proj", "encoder.layer.1.attention.o_proj"),
    "dinov2_registers": ("encoder.layer.1.attention.q_proj", "encoder.layer.1.attention.o_proj"),
    "clip": ("encoder.layers.1.self_attn.q_proj", "encoder.layers.1.self_attn.out_proj"),
}
MODELS = list(BUILDERS)


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", MODELS)
def test_family_roles_name_real_linears(name):
    backbone = describe(BUILDERS[name]())
    assert (backbone.family, backbone.library) == ("transformers", "transformers")
    q, out = ROLES[name]
    assert backbone.attention(1)["q"].module == q and backbone.attention(1)["out"].module == out
    mlp_keys = 3 if name == "dinov2_swiglu" else 2
    assert len(projection_linears(backbone)) == 2 * (4 + mlp_keys)


@pytest.mark.parametrize("name", MODELS)
def test_prepare_keeps_outputs_keys_and_calls_every_projection(name, images):
    check_prepare(BUILDERS[name], images)


@pytest.mark.parametrize("name", MODELS)
def test_a_checkpoint_saved_by_transformers_loads_strictly(name, images):
    check_native_checkpoint_loads(BUILDERS[name], images)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [32, 48])
def test_token_stream_pools_to_the_features_at_any_size(name, size):
    backbone = describe(BUILDERS[name]())
    images = torch.randn(2, 3, size, size)
    check_token_stream(backbone, images, patches=(size // TINY["patch_size"]) ** 2)


@pytest.mark.parametrize("name", MODELS)
def test_perturbing_the_attention_output_reaches_the_features(name, images):
    backbone = describe(BUILDERS[name]())
    check_perturbation_reaches_output(backbone, images, ROLES[name][1])


@pytest.mark.parametrize("name", ["dinov2", "dinov2_registers", "clip"])
def test_features_are_the_library_pooler_output(name, images):
    model = BUILDERS[name]()
    torch.testing.assert_close(describe(model).features(images), model(images).pooler_output, atol=1e-5, rtol=0)


def test_vit_features_are_the_normed_cls_token_not_the_tanh_pooler(images):
    model = BUILDERS["vit"]()
    output = model(images)
    features = describe(model).features(images)
    torch.testing.assert_close(features, output.last_hidden_state[:, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(features, output.pooler_output, atol=1e-2)


def test_register_tokens_follow_the_class_token(images):
    model = BUILDERS["dinov2_registers"]()
    backbone = describe(model)
    assert backbone.num_prefix_tokens == 1 + REGISTERS
    tokens = backbone.embed(images)
    registers = model.embeddings.register_tokens.expand(len(images), -1, -1)
    torch.testing.assert_close(tokens[:, 1 : 1 + REGISTERS], registers)


def test_swiglu_mlp_gives_gate_up_and_down_linears():
    mlp = describe(BUILDERS["dinov2_swiglu"]()).mlp(0)
    assert {key: p.module.rsplit(".", 1)[1] for key, p in mlp.items()} == {
        "fc1_gate": "gate_proj", "fc1": "up_proj", "fc2": "down_proj",
    }


@pytest.mark.parametrize("name", MODELS)
def test_attention_maps_come_per_block_with_eager_attention(name, images):
    model = BUILDERS[name]()
    assert describe(model).capabilities.attention_maps
    model.set_attn_implementation("eager")
    maps = model(images, output_attentions=True).attentions
    tokens = describe(model).num_prefix_tokens + 16
    assert [m.shape for m in maps] == [(2, 2, tokens, tokens)] * 2


@pytest.mark.parametrize("name", MODELS)
def test_attention_weights_are_recorded_under_eager_attention_then_sdpa_is_back(name):
    backbone = describe(BUILDERS[name]())
    assert backbone.module.config._attn_implementation == "sdpa"
    images = torch.randn(2, 3, 32, 48)  # 4 x 6 patches
    check_attention_weights(backbone, images, tokens=backbone.num_prefix_tokens + 24)
    assert backbone.module.config._attn_implementation == "sdpa"
    check_token_feature_map(backbone, images, grid=(4, 6))
    assert backbone.pools_class_token


def test_transformers_4_layout_is_one_clear_error():
    old_vit = type("ViTModel", (nn.Module,), {"__module__": "transformers.models.vit.modeling_vit"})()
    old_vit.encoder = nn.Module()  # 4.x: encoder.layer.{i}.attention.attention.query
    with pytest.raises(ConfigError) as error:
        describe(old_vit)
    assert str(error.value) == (
        "ViTModel (transformers) has no module layers.0.attention.q_proj: medpeft reads the module "
        "layout of transformers 5 (pip install 'transformers>=5')"
    )


def test_vilt_is_not_a_family(vilt_config):
    with pytest.raises(ConfigError, match=r"cannot adapt a transformers\.models\.vilt\.modeling_vilt\.ViltModel"):
        describe(ViltModel(vilt_config))


@pytest.mark.parametrize(("name", "mean_std", "interpolation", "crop"), [
    ("vit", HALF_MEAN_STD, "bilinear", 1.0),  # ViTImageProcessor's defaults
    ("dinov2", IMAGENET_MEAN_STD, "bicubic", 224 / 256),  # facebook/dinov2-*'s processor
    ("clip", CLIP_MEAN_STD, "bicubic", 1.0),  # CLIPImageProcessor's defaults
])
def test_preprocessing_without_a_processor_file_is_the_class_processor(name, mean_std, interpolation, crop):
    pre = describe(BUILDERS[name]()).preprocessing()
    assert pre == {"size": 32, "mean": mean_std[0], "std": mean_std[1], "interpolation": interpolation, "crop": crop}


def test_preprocessing_of_a_folder_is_its_processor_file(tmp_path):
    folder = save_dinov2(tmp_path / "dinov2")
    assert describe(build_transformers(str(folder))).preprocessing() == DINOV2_INPUT
    assert describe(build_transformers("any", weights=folder)).preprocessing() == DINOV2_INPUT
    (folder / PROCESSOR_FILE).write_text("{bad")
    with pytest.raises(ConfigError, match=r"dinov2/preprocessor_config\.json: invalid JSON"):
        describe(build_transformers(str(folder))).preprocessing()


def test_a_meta_build_reads_the_folder_config_only(tmp_path):
    folder = save_dinov2(tmp_path / "dinov2", hidden_size=48)
    model = build_transformers("any", weights=folder, meta=True)
    assert model.embeddings.cls_token.shape == (1, 1, 48) and model.embeddings.cls_token.is_meta


def test_preprocessing_of_a_hub_id_is_its_cached_processor_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "models--org--rad" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    (snapshot / PROCESSOR_FILE).write_text(json.dumps(DINOV2_PROCESSOR))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    model = BUILDERS["dinov2"]()
    model.config._name_or_path = "org/rad"
    assert describe(model).preprocessing() == DINOV2_INPUT
    model.config._name_or_path = "org/other"  # not in the cache: the class's defaults
    assert describe(model).preprocessing()["mean"] == IMAGENET_MEAN_STD[0]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("name", MODELS)
def test_masked_tokens_are_as_if_absent(name, attention, images):
    model = BUILDERS[name]()
    model.set_attn_implementation(attention)
    check_masked_stream(describe(model), images)
