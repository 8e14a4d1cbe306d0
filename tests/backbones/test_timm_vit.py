"""timm builder: names, families it reads, layer names in kwargs, local weights, resizing, clear errors."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import GluMlp, SwiGLUPacked
from torch import nn

from medpeft.backbones import build_vit
from medpeft.backbones.timm_build import check_backbone, check_model, patch_multiple, resolve_layers
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
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        build_vit("vit_base_patch16_224", 2, img_size=32, pretrained=True, **TINY)
    message = str(error.value)
    assert "\n" not in message and "the hub is offline (HF_HUB_OFFLINE=1)" in message
    assert "model.weights=path/to/model.safetensors" in message and "--weights" not in message


def test_without_network_the_hub_check_fails_before_any_download(monkeypatch):
    """No offline variable: one connect attempt decides (here: refused), no retries."""
    from medpeft.backbones import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    hub._reachable.cache_clear()
    with pytest.raises(WeightsError, match=r"no connection to 127.0.0.1 within 2 s.*model.weights="):
        build_vit("vit_base_patch16_224", 2, img_size=32, pretrained=True, **TINY)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_vit("resnet_not_a_vit_xyz", 2)


READS = "it reads timm VisionTransformer, Eva (family timm_vit); SwinTransformer, ConvNeXt (family timm_hier)"


@pytest.mark.parametrize(("name", "kind"), [
    ("resnet18", "ResNet"),
    ("vit_small_patch16_18x2_224", "VisionTransformer of ParallelThingsBlock blocks"),
])
def test_models_no_family_reads_are_refused_in_one_line(name, kind):
    with pytest.raises(ConfigError) as error:
        check_backbone(name, patch_size=8)  # said before that a ResNet takes no patch_size
    assert str(error.value) == f"model.backbone: {name!r} is a {kind}, which medpeft does not adapt; {READS}"


@pytest.mark.parametrize("name", ["eva02_tiny_patch14_224", "swin_tiny_patch4_window7_224", "convnext_tiny",
                                  "deit_tiny_distilled_patch16_224", "vit_base_patch14_reg4_dinov2.lvd142m"])
def test_every_family_model_passes_the_check(name):
    check_backbone(name)


def test_hub_ids_are_checked_after_creation_not_refused_by_name(monkeypatch):
    def no_creation(*args, **kwargs):
        raise AssertionError("the name check must not build or download anything")

    monkeypatch.setattr(timm, "create_model", no_creation)
    check_backbone("hf-hub:paige-ai/Virchow2", mlp_layer="SwiGLUPacked", act_layer="SiLU")
    assert patch_multiple("hf-hub:paige-ai/Virchow2", 250) == 250
    monkeypatch.undo()
    with torch.device("meta"):
        resnet = timm.create_model("resnet18")
    with pytest.raises(ConfigError, match="'hf-hub:org/net' is a ResNet, which medpeft does not adapt"):
        check_model(resnet, "hf-hub:org/net")


def test_hub_id_offline_says_the_hub_is_needed():
    with pytest.raises(WeightsError, match="could not fetch the architecture of 'hf-hub:paige-ai/Virchow2'"):
        build_vit("hf-hub:paige-ai/Virchow2", 2, mlp_layer="SwiGLUPacked", act_layer="SiLU")


def test_layer_names_from_a_config_resolve_to_timm_classes():
    resolved = resolve_layers({"mlp_layer": "SwiGLUPacked", "act_layer": "torch.nn.SiLU", "depth": 2})
    assert resolved == {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "depth": 2}
    assert resolve_layers({"act_layer": "silu"})["act_layer"] is nn.SiLU
    assert resolve_layers({"act_layer": "quick_gelu"})["act_layer"] is timm.layers.QuickGELU
    assert resolve_layers({"act_layer": nn.GELU})["act_layer"] is nn.GELU  # classes pass through


def test_string_layers_build_a_swiglu_vit_and_the_kwargs_stay_json():
    kwargs = dict(TINY, mlp_layer="SwiGLUPacked", act_layer="SiLU", mlp_ratio=5.3375, reg_tokens=4)
    model = build_vit("vit_huge_patch14_224", 2, img_size=32, **kwargs)
    assert isinstance(model.blocks[0].mlp, GluMlp) and isinstance(model.blocks[0].mlp.act, nn.SiLU)
    assert json.loads(json.dumps(kwargs))["mlp_layer"] == "SwiGLUPacked"


def test_unknown_layer_name_and_unknown_argument_are_one_line():
    with pytest.raises(ConfigError) as error:
        build_vit("vit_base_patch16_224", 2, img_size=32, mlp_layer="SwishMlp", **TINY)
    assert str(error.value) == (
        "model.kwargs.mlp_layer: unknown layer 'SwishMlp'; medpeft accepts Mlp, GluMlp, SwiGLUPacked, SwiGLU "
        "(any case, with or without a torch.nn. or timm.layers. prefix)"
    )
    with pytest.raises(ConfigError, match="model.kwargs: 'convnext_tiny' does not take these arguments"):
        build_vit("convnext_tiny", 2, depthz=3)


def test_patch_multiple_keeps_the_size_of_models_without_patches():
    assert patch_multiple("convnext_tiny", 250) == 250
    assert patch_multiple("vit_base_patch14_dinov2", 250) == 252


def test_a_model_that_reads_any_size_is_built_without_img_size():
    model = build_vit("convnext_tiny", 2, img_size=48, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 2)


@pytest.mark.parametrize(("name", "kwargs", "side"), [
    ("eva02_tiny_patch14_224", dict(embed_dim=32, depth=2, num_heads=2), 28),
    ("swin_tiny_patch4_window7_224", dict(window_size=4, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1,) * 4), 64),
    ("convnext_tiny", dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32)), None),
])
def test_local_weights_of_other_families_load_all_but_the_classifier(tmp_path, name, kwargs, side):
    source = build_vit(name, 5, img_size=side, **kwargs)
    with torch.no_grad():
        for parameter in source.parameters():  # norms too: none keeps its init value
            parameter.add_(torch.rand_like(parameter))
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = build_vit(name, 2, img_size=side, weights=path, **kwargs)
    own = model.state_dict()
    classifier = ("head.weight", "head.bias", "head.fc.")  # ConvNeXt's head.norm is backbone
    for key, value in source.state_dict().items():
        if not key.startswith(classifier):
            torch.testing.assert_close(own[key], value, msg=key)


def test_a_vit_without_pooling_is_refused_with_the_setting_to_change():
    with pytest.raises(ConfigError) as error:
        build_vit("vit_base_patch16_224", 2, img_size=32, global_pool="", **TINY)
    assert str(error.value) == (
        "model.kwargs.global_pool: 'vit_base_patch16_224' is built without pooling (global_pool ''); "
        "set model.kwargs.global_pool to token (class token) or avg (mean of the patch tokens)"
    )
    assert build_vit("vit_base_patch16_224", 2, img_size=32, global_pool="avg", **TINY).global_pool == "avg"
