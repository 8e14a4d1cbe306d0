"""Foundation-model presets: exact architectures offline (parameter counts on the meta device),
names in the API and configs, the authors' poolings, and native checkpoints loaded back."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from open_clip.model import CLIP as OpenClipModel
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model

import medpeft
from medpeft.backbones.library import build_open_clip, build_transformers
from medpeft.backbones.presets import PRESETS, backbone_presets
from medpeft.backbones.timm_build import build_vit, resolve_layers
from medpeft.config.schema import ModelSettings
from medpeft.errors import ConfigError
from medpeft.model import ModelSpec

TINY_VIT = dict(embed_dim=32, depth=2, num_heads=2)
BUILDERS = {"timm": lambda name: build_vit(name, 0), "transformers": build_transformers, "open_clip": build_open_clip}


def native_names(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of an adapted backbone under its library's names (adapters' ``.base`` unwrapped)."""
    return {k.replace(".base.", "."): v for k, v in module.state_dict().items() if "lora_" not in k}


def images(side: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_offline_with_its_published_parameter_count(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        encoder = BUILDERS[preset.kind](name)
    count = sum(p.numel() for p in encoder.parameters()) / 1e6
    if preset.params_m is None:
        assert "no published count" in preset.params_source
    else:
        assert count == pytest.approx(preset.params_m, rel=0.01), (name, count, preset.params_source)


def test_the_issue_presets_are_there_each_with_its_facts_and_sources():
    wanted = {"rad-dino", "biomedclip", "uni", "uni2-h", "virchow", "virchow2", "prov-gigapath", "retfound",
              "phikon", "dinov2-s", "dinov2-b", "dinov2-l", "dinov2-g", "clip-b16"}
    assert wanted <= set(backbone_presets())
    for preset in backbone_presets().values():
        assert preset.sources and all(preset.sources) and preset.paper and preset.licence
        assert len(preset.mean) == len(preset.std) == 3 and preset.img_size > 0


def test_a_preset_name_in_a_config_sets_kind_and_size_unless_given():
    assert (ModelSettings(backbone="rad-dino").kind, ModelSettings(backbone="rad-dino").img_size) == ("transformers", 518)
    assert ModelSettings(backbone="rad-dino", img_size=224).img_size == 224
    assert (ModelSettings().kind, ModelSettings().img_size) == ("timm", 224)
    with pytest.raises(ConfigError) as error:
        ModelSettings(backbone="biomedclip", kind="transformers")
    assert str(error.value) == ("model.kind: 'transformers' does not fit the preset 'biomedclip', a open_clip model; "
                                "leave model.kind out")
    assert ModelSpec("uni", 2).img_size == 224 and ModelSpec("dinov2-s", 2).img_size == 518


def test_adapt_by_preset_name_records_the_preset_preprocessing(tmp_path):
    model = medpeft.adapt("rad-dino", medpeft.LoraSettings(rank=2), num_classes=2, hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=2, image_size=28)
    assert (model.spec.kind, model.spec.img_size) == ("transformers", 518)
    assert model(images(28)).shape == (2, 2)
    config = json.loads((model.save_adapter(tmp_path / "a") / "adapter_config.json").read_text())
    assert config["backbone"] == "rad-dino"
    assert config["preprocessing"]["mean"] == [0.5307] * 3 and config["preprocessing"]["size"] == 518

    model = medpeft.adapt("uni", medpeft.LoraSettings(rank=2), num_classes=2, img_size=32, **TINY_VIT)
    config = json.loads((model.save_adapter(tmp_path / "b") / "adapter_config.json").read_text())
    assert config["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and config["preprocessing"]["size"] == 32


@pytest.mark.parametrize("name, registers", [("virchow", 0), ("virchow2", 4)])
def test_virchow_pools_cls_and_the_mean_of_the_patch_tokens(name, registers):
    model = medpeft.adapt(name, medpeft.LoraSettings(rank=2), num_classes=3, img_size=28, **TINY_VIT)
    tokens = model.backbone.forward_features(images(28))
    card = torch.cat([tokens[:, 0], tokens[:, 1 + registers:].mean(1)], dim=-1)  # the model card's embedding
    with torch.no_grad():
        torch.testing.assert_close(model.features(images(28)), card)
        assert model(images(28)).shape == (2, 3)
    assert model.backbone.num_prefix_tokens == 1 + registers


def _native_timm(name: str, **overrides) -> torch.nn.Module:
    """The preset's timm model as its authors build it (no medpeft), tiny."""
    preset = PRESETS[name]
    kwargs = {k: v for k, v in preset.model_kwargs.items() if k != "pooling"}
    return timm.create_model(preset.backbone, num_classes=0, **resolve_layers({**kwargs, **overrides})).eval()


@pytest.mark.parametrize("name, side", [("uni", 32), ("virchow2", 28)])
def test_a_timm_safetensors_checkpoint_loads_every_tensor(name, side, tmp_path):
    torch.manual_seed(1)
    native = _native_timm(name, img_size=side, **TINY_VIT)
    save_file({k: v.contiguous() for k, v in native.state_dict().items()}, str(tmp_path / "model.safetensors"))
    model = medpeft.adapt(name, medpeft.LoraSettings(rank=2), num_classes=2, img_size=side,
                          weights=tmp_path / "model.safetensors", **TINY_VIT).eval()
    own = native_names(model.backbone)
    for key, value in native.state_dict().items():
        assert torch.equal(own[key], value), key
    with torch.no_grad():
        tokens = native.forward_features(images(side))
        expected = tokens[:, 0] if name == "uni" else torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1)
        torch.testing.assert_close(model.features(images(side)), expected, atol=1e-5, rtol=0)


def test_a_retfound_mae_checkpoint_loads_its_encoder(tmp_path):
    torch.manual_seed(2)
    # RETFound's models_vit.VisionTransformer(global_pool=True): timm's ViT-L/16 without the final
    # norm, a new fc_norm over the mean of the patch tokens
    native = timm.create_model("vit_large_patch16_224", num_classes=0, img_size=32, global_pool="avg",
                               **TINY_VIT).eval()
    encoder = {k: v for k, v in native.state_dict().items() if not k.startswith("fc_norm.")}
    mae = {"norm.weight": torch.randn(32), "norm.bias": torch.randn(32), "mask_token": torch.randn(1, 1, 32),
           "decoder_embed.weight": torch.randn(16, 32), "decoder_pred.weight": torch.randn(768, 16)}
    torch.save({"model": {**encoder, **mae}, "epoch": 799}, tmp_path / "RETFound_mae_natureCFP.pth")
    model = medpeft.adapt("retfound", medpeft.LoraSettings(rank=2), num_classes=2, img_size=32,
                          weights=tmp_path / "RETFound_mae_natureCFP.pth", **TINY_VIT).eval()
    own = native_names(model.backbone)
    for key, value in native.state_dict().items():
        assert torch.equal(own[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(model.features(images(32)), native(images(32)), atol=1e-5, rtol=0)


def test_retfound_pools_the_patch_mean_through_a_new_norm():
    model = medpeft.adapt("retfound", medpeft.LoraSettings(rank=2), num_classes=2, img_size=32, **TINY_VIT).eval()
    vit = model.backbone
    assert isinstance(vit.norm, torch.nn.Identity)
    assert torch.equal(vit.fc_norm.weight, torch.ones(32)) and torch.equal(vit.fc_norm.bias, torch.zeros(32))
    tokens = vit.forward_features(images(32))
    with torch.no_grad():
        expected = torch.nn.functional.layer_norm(tokens[:, 1:].mean(1), (32,), eps=1e-6)
        torch.testing.assert_close(model.features(images(32)), expected, atol=1e-6, rtol=0)


def test_a_rad_dino_folder_loads_every_tensor(tmp_path):
    torch.manual_seed(3)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=28,
                          mlp_ratio=4, layerscale_value=1.0, layer_norm_eps=1e-6)
    native = Dinov2Model(config).eval()
    native.save_pretrained(tmp_path / "rad-dino")
    model = medpeft.adapt("rad-dino", medpeft.LoraSettings(rank=2), num_classes=2, weights=tmp_path / "rad-dino").eval()
    own = native_names(model.backbone)
    for key, value in native.state_dict().items():
        assert torch.equal(own[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(model.features(images(28)), native(pixel_values=images(28)).pooler_output,
                                   atol=1e-5, rtol=0)


def test_a_biomedclip_open_clip_checkpoint_loads_the_vision_tower(tmp_path):
    torch.manual_seed(4)
    vision = dict(timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, timm_pool="",
                  timm_proj="linear", image_size=224)
    native = OpenClipModel(16, CLIPVisionCfg(**vision), CLIPTextCfg(context_length=8, vocab_size=50, width=16,
                                                                    heads=2, layers=1)).eval()
    torch.save(native.state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    model = medpeft.adapt("biomedclip", medpeft.LoraSettings(rank=2), num_classes=2, embed_dim=16, vision_cfg=vision,
                          weights=tmp_path / "open_clip_pytorch_model.bin").eval()
    own = native_names(model.backbone)
    for key, value in native.visual.state_dict().items():
        assert torch.equal(own[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(model.features(images(224, 1)), native.encode_image(images(224, 1)),
                                   atol=1e-5, rtol=0)


def test_a_gated_preset_offline_says_how_to_get_access():
    with pytest.raises(medpeft.WeightsError) as error:
        build_vit("uni", 2, pretrained=True, img_size=32, **TINY_VIT)
    message = str(error.value)
    assert "\n" not in message
    assert "MahmoodLab/UNI is gated: request access at https://huggingface.co/MahmoodLab/UNI" in message


def test_the_backbones_command_lists_the_presets_and_names_a_typo(capsys):
    from medpeft.cli import main

    assert main(["backbones"]) == 0
    table = capsys.readouterr().out
    assert "| uni | timm | ViT-L/16, LayerScale | 224 |" in table and "| rad-dino | transformers |" in table
    assert main(["backbones", "retfound"]) == 0
    assert "github.com/rmaphoh/RETFound_MAE" in capsys.readouterr().out
    assert main(["backbones", "unni"]) == 2
    assert capsys.readouterr().err.strip().endswith("did you mean 'uni'?")
