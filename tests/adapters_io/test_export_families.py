"""Merged and ONNX export on every backbone family, each loaded back by its own library.

Adapters are saved from tiny random-init models built by name (so the adapter folder
rebuilds them), trained one step; the merged export must load with the library alone
(timm ``local-dir:``, transformers ``AutoModel.from_pretrained``, open_clip's tower
``load_state_dict``) and give the adapted model's features and logits.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel

from medpeft.adapters_io.config import AdapterConfig, Preprocessing
from medpeft.adapters_io.export import (
    MERGED_CONFIG,
    OPEN_CLIP_WEIGHTS,
    export_merged,
    export_onnx,
    merged_model,
    timm_config,
)
from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.adapters_io.head_file import HEAD_CONFIG, HEAD_WEIGHTS
from medpeft.backbones.base import describe
from medpeft.backbones.timm_build import check_rebuilds
from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.methods import DoraSettings, LoraSettings
from medpeft.model import ModelSpec, build_model
from tests.methods.conftest import BACKBONE, TINY
from tests.test_api import HF, SWIN, train_step

TINY_CLIP = dict(
    embed_dim=16,
    vision_cfg=dict(layers=2, width=32, head_width=16, mlp_ratio=2.0, patch_size=8, image_size=32),
    text_cfg=dict(context_length=8, vocab_size=64, width=16, heads=1, layers=1),
)
# family: (backbone name, kind, model kwargs, img_size, input side, method, settings)
FAMILIES = {
    "timm_vit": (BACKBONE, "timm", TINY, 32, 32, "lora", LoraSettings(rank=2, targets=("q", "v", "fc1"))),
    "timm_swin": ("swin_tiny_patch4_window7_224", "timm", {k: v for k, v in SWIN.items() if k != "img_size"}, 64, 64,
                  "dora", DoraSettings(rank=2)),
    "timm_convnext": ("convnext_tiny", "timm", dict(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), ls_init_value=1.0),
                      None, 32, "lora", LoraSettings(rank=2, targets=("fc1", "fc2"))),
    "hf_vit": ("tiny-vit", "transformers", dict(model_type="vit", **HF, intermediate_size=64), None, 32,
               "lora", LoraSettings(rank=2, targets=("q", "v", "out"))),
    "hf_dinov2": ("tiny-dinov2", "transformers", dict(model_type="dinov2", **HF, mlp_ratio=2), None, 32,
                  "dora", DoraSettings(rank=2, targets=("q", "v", "fc1"))),
    "hf_clip": ("tiny-clip", "transformers", dict(model_type="clip_vision_model", **HF, intermediate_size=64),
                None, 32, "lora", LoraSettings(rank=2)),
    "open_clip": ("ViT-B-32", "open_clip", TINY_CLIP, None, 32, "lora",
                  LoraSettings(rank=2, targets=("q", "v", "out", "fc2"))),
}


def spec_of(family: str) -> ModelSpec:
    name, kind, kwargs, img_size, _, method, settings = FAMILIES[family]
    return ModelSpec(name, 2, method, settings, img_size=img_size, kind=kind, model_kwargs=dict(kwargs))


def images(family: str, n: int = 3) -> torch.Tensor:
    side = FAMILIES[family][4]
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def save_trained(family: str, folder: Path) -> tuple[Path, torch.Tensor]:
    """The family's adapter trained one step (B != 0), saved on its seeded random backbone;
    also the features of that backbone before training."""
    spec = spec_of(family)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        before = model.eval().features(images(family))
    train_step(model.train(), images(family))
    size = Preprocessing(size=FAMILIES[family][4])
    return save_adapter(model.eval(), folder, spec, ["no", "yes"], "multiclass", size, backbone_seed=0), before


def load_merged(family: str, out: Path) -> tuple[nn.Module, torch.Tensor]:
    """The merged export loaded by the family's library alone: the model and its logits."""
    x = images(family)
    kind = FAMILIES[family][1]
    if kind == "timm":
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        return plain, plain(x)
    if kind == "transformers":
        plain = AutoModel.from_pretrained(out).eval()
    else:
        plain = open_clip.create_model(FAMILIES[family][0], **TINY_CLIP).visual.eval()
        plain.load_state_dict(load_file(str(out / OPEN_CLIP_WEIGHTS)))
    head = load_file(str(out / HEAD_WEIGHTS))
    return plain, nn.functional.linear(describe(plain).features(x), head["weight"], head["bias"])


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_loads_in_the_backbone_library(family, tmp_path):
    folder, before = save_trained(family, tmp_path / "task")
    out = export_merged(folder, tmp_path / "merged")
    adapted, _ = load_adapter(folder)
    x = images(family)
    with torch.no_grad():
        plain, logits = load_merged(family, out)
        expected = adapted.eval()(x)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
        features = describe(plain).features(x)
        torch.testing.assert_close(features, adapted.features(x), atol=1e-5, rtol=0)
    assert (features - before).abs().max() > 1e-3  # the trained adapter is in the weights
    assert type(plain).__module__.split(".")[0] == FAMILIES[family][1]
    assert not any("medpeft" in type(m).__module__ for m in plain.modules())


@pytest.mark.parametrize("family", ["hf_dinov2", "open_clip"])
def test_the_head_beside_a_library_encoder_names_labels_and_features(family, tmp_path):
    folder, _ = save_trained(family, tmp_path / "task")
    out = export_merged(folder, tmp_path / "merged")
    info = json.loads((out / HEAD_CONFIG).read_text())
    name, kind, kwargs = FAMILIES[family][:3]
    assert (info["labels"], info["task"], info["library"], info["backbone"]) == (["no", "yes"], "multiclass", kind, name)
    assert info["model_kwargs"] == json.loads(json.dumps(kwargs)) and info["preprocessing"]["size"] == 32
    features = {"hf_dinov2": "model(pixel_values=images).pooler_output", "open_clip": "model(images)"}
    assert info["features"] == features[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_of_every_family_matches_onnxruntime(family, tmp_path):
    folder, _ = save_trained(family, tmp_path / "task")
    assert export_onnx(folder, tmp_path / "task.onnx") < 1e-4
    assert (tmp_path / "task.onnx").stat().st_size > 0


def test_a_backbone_torch_onnx_cannot_trace_is_refused_naming_it(tmp_path):
    spec = ModelSpec("eva02_tiny_patch14_224", 2, img_size=28, model_kwargs=dict(embed_dim=32, depth=2, num_heads=2))
    folder = save_adapter(build_model(spec), tmp_path / "eva", spec, ["a", "b"], "multiclass", backbone_seed=0)
    message = (
        rf"^{re.escape(str(folder))}: torch\.onnx cannot export the Eva \(timm\) backbone \(TypeError: .+\); "
        r"export the merged model \(--merged\) instead$"
    )
    with pytest.raises(ConfigError, match=message):
        export_onnx(folder, tmp_path / "eva.onnx")
    assert list(tmp_path.glob("*.onnx*")) == []
    plain, _ = merged_model(folder)  # the merged export still works
    assert type(plain) is timm.models.eva.Eva


def test_timm_config_names_activations_as_timm_does(tmp_path):
    spec = ModelSpec(BACKBONE, 2, img_size=32, model_kwargs={**TINY, "act_layer": "torch.nn.SiLU"})
    torch.manual_seed(0)
    model = build_model(spec).eval()
    train_step(model.train(), torch.randn(3, 3, 32, 32))
    folder = save_adapter(model.eval(), tmp_path / "task", spec, ["a", "b"], "multiclass", backbone_seed=0)
    out = export_merged(folder, tmp_path / "merged")
    assert json.loads((out / MERGED_CONFIG).read_text())["model_args"]["act_layer"] == "silu"
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert isinstance(plain.blocks[0].mlp.act, nn.SiLU)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=0)


def test_a_hub_models_own_arguments_are_written_for_plain_timm():
    model = timm.create_model(BACKBONE, num_classes=2, img_size=32, **TINY)
    model.pretrained_model_args = {**TINY, "num_classes": 0}  # what timm keeps of an hf-hub config.json
    config = AdapterConfig("hf-hub:org/tiny-vit", ["a", "b"], "multilabel", Preprocessing(size=32), img_size=32)
    saved = timm_config(model, config)
    assert (saved["architecture"], saved["num_classes"]) == (BACKBONE, 2)
    assert saved["model_args"] == {**TINY, "img_size": 32}
    assert saved["pretrained_cfg"]["fixed_input_size"] is True and saved["medpeft_task"] == "multilabel"


def test_an_mlp_class_plain_timm_cannot_read_is_refused(tmp_path):
    spec = ModelSpec(BACKBONE, 2, img_size=32, model_kwargs={**TINY, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"})
    folder = save_adapter(build_model(spec), tmp_path / "task", spec, ["a", "b"], "multiclass", backbone_seed=0)
    message = (
        rf"^{re.escape(str(folder))}: model\.kwargs\.mlp_layer: 'SwiGLUPacked' is a layer class, which a timm "
        r"config\.json cannot name \(timm reads activations by name only\), so plain timm would build another "
        r"model; export with --onnx or --output \(PEFT\) instead$"
    )
    with pytest.raises(ConfigError, match=message):
        export_merged(folder, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    "arch, model_args, message",
    [
        (BACKBONE, {**TINY, "img_size": 32, "depth": 1},
         r"^timm builds another vit_tiny_patch16_224 from model_args \{.*\}: \[\('blocks\.1\.attn\.proj\.bias'"),
        ("convnext_tiny", {"img_size": 32},
         r"^plain timm cannot build convnext_tiny from model_args \{'img_size': 32\}: .*unexpected keyword argument 'img_size'"),
    ],
)
def test_the_written_model_args_are_checked_against_the_architecture(arch, model_args, message):
    with torch.device("meta"):
        model = timm.create_model(BACKBONE, img_size=32, **TINY)
    with pytest.raises(ConfigError, match=message):
        check_rebuilds(arch, model_args, model)
    check_rebuilds(BACKBONE, {**TINY, "img_size": 32}, model)


def test_cli_exports_a_transformers_dora_adapter_three_ways(tmp_path, capsys):
    folder, _ = save_trained("hf_dinov2", tmp_path / "task")
    argv = ["export", str(folder), "--merged", str(tmp_path / "m"), "--onnx", str(tmp_path / "t.onnx"),
            "--output", str(tmp_path / "peft")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f'transformers: AutoModel.from_pretrained("{tmp_path / "m"}"); task head {tmp_path / "m" / HEAD_WEIGHTS}' in out
    assert f'peft: PeftModel.from_pretrained(native_model, "{tmp_path / "peft"}")' in out
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["target_modules"] == ["fc1", "q_proj", "v_proj"]
    assert json.loads((tmp_path / "peft" / HEAD_CONFIG).read_text())["labels"] == ["no", "yes"]


def test_cli_refusals_are_one_line_naming_the_adapter(tmp_path, capsys):
    spec = ModelSpec(BACKBONE, 2, img_size=32, model_kwargs=dict(TINY), modalities=("fundus", "oct"))
    multi = save_adapter(build_model(spec), tmp_path / "multi", spec, ["a", "b"], "multiclass", backbone_seed=0)
    spec = ModelSpec(*FAMILIES["open_clip"][:1], 2, "dora", DoraSettings(), kind="open_clip",
                     model_kwargs=dict(TINY_CLIP))
    dora = save_adapter(build_model(spec), tmp_path / "dora", spec, ["a", "b"], "multiclass",
                        Preprocessing(size=32), backbone_seed=0)
    one_backbone = (f"medpeft export: error: {multi}: only adapters of one image backbone and a head export; "
                    "this one is a timm model over ['fundus', 'oct'] (fusion 'auto')")
    cases = [
        ([str(multi), "--output", str(tmp_path / "p")], one_backbone),
        ([str(multi), "--merged", str(tmp_path / "m")], one_backbone),
        ([str(dora), "--output", str(tmp_path / "p")],
         f"medpeft export: error: {dora}: transformer.resblocks.0.attn: PEFT has no DoRA for nn.MultiheadAttention"),
    ]
    for argv, message in cases:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1
    assert not (tmp_path / "p").exists() and not (tmp_path / "m").exists()
