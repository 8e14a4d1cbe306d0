"""PEFT export on every backbone family: ``PeftModel.from_pretrained(native, folder)`` equals medpeft.

Each family is a tiny random-init model built by its own library; the adapter is trained one
step (so B != 0) and exported; PEFT loads it onto a freshly built native model of the same
weights, whose features (and logits, through the native classifier or ``head.safetensors``)
must equal medpeft's adapted model within 1e-5.
"""

from __future__ import annotations

import json

import pytest
import timm
import torch
from peft import PeftModel
from safetensors.torch import load_file
from torch import nn

import medpeft
from medpeft.adapters_io.head_file import HEAD_CONFIG, HEAD_WEIGHTS
from medpeft.adapters_io.peft import export_peft
from medpeft.backbones.base import describe
from medpeft.errors import ConfigError
from medpeft.model import ModelSpec, build_model
from tests.methods.conftest import BACKBONE, TINY
from tests.test_api import FAMILIES, build, train_step

EVA_SEPARATE_QKV = dict(img_size=28, embed_dim=32, depth=2, num_heads=2, qkv_fused=False)
TARGETS = ("q", "v", "fc1")
# family: PEFT target_modules for q, v and fc1 (leaf names: every block is adapted)
PEFT_TARGETS = {
    "timm_vit": ["fc1", "qkv"],
    "timm_eva_separate": ["fc1", "q_proj", "v_proj"],
    "timm_swin": ["fc1", "qkv"],
    "hf_vit": ["fc1", "q_proj", "v_proj"],
    "hf_dinov2": ["fc1", "q_proj", "v_proj"],
    "hf_clip": ["fc1", "q_proj", "v_proj"],
    "open_clip": ["attn", "c_fc"],
}
CLASSIFIER = {"timm_vit": "head", "timm_eva_separate": "head", "timm_swin": "head.fc"}


def native(family: str) -> nn.Module:
    """A fresh native model of ``family`` (same seed: same weights)."""
    if family == "timm_eva_separate":
        torch.manual_seed(0)
        return timm.create_model("eva02_tiny_patch14_224", num_classes=0, **EVA_SEPARATE_QKV).eval()
    return build(family)


def side(family: str) -> int:
    return 28 if family == "timm_eva_separate" else FAMILIES[family][1]


def trained(family: str, settings: object) -> tuple[medpeft.AdaptedModel, torch.Tensor]:
    """``family`` adapted with ``settings`` and trained one step; the images it was trained on."""
    x = torch.randn(3, 3, side(family), side(family), generator=torch.Generator().manual_seed(1))
    model = medpeft.adapt(native(family), settings, num_classes=2).train()
    train_step(model, x)
    return model.eval(), x


def peft_logits(family: str, loaded: nn.Module, folder, x: torch.Tensor) -> torch.Tensor:
    """Logits of the PEFT-loaded native model: its own classifier, else the exported head file."""
    if family in CLASSIFIER:
        return loaded(x)
    head = load_file(str(folder / HEAD_WEIGHTS))
    return nn.functional.linear(describe(loaded).features(x), head["weight"], head["bias"])


CASES = [(f, "lora") for f in PEFT_TARGETS] + [(f, "dora") for f in PEFT_TARGETS if f != "open_clip"]


@pytest.mark.parametrize("family, method", CASES)
def test_peft_loads_onto_the_native_model_with_the_same_outputs(family, method, tmp_path):
    settings = (medpeft.LoraSettings if method == "lora" else medpeft.DoraSettings)(rank=2, targets=TARGETS)
    model, x = trained(family, settings)
    folder = export_peft(model.model, tmp_path / "peft", labels=["no", "yes"], task="multiclass")

    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] == PEFT_TARGETS[family]
    assert config["use_dora"] is (method == "dora")
    assert config["modules_to_save"] == ([CLASSIFIER[family]] if family in CLASSIFIER else None)
    assert (folder / HEAD_WEIGHTS).is_file() is (family not in CLASSIFIER)

    fresh = native(family)
    if family in CLASSIFIER:
        fresh.reset_classifier(2)  # the native model built with the task's number of classes
    with torch.no_grad():
        base = describe(fresh).features(x)
        loaded = PeftModel.from_pretrained(fresh, folder).eval()
        expected = model.features(x)
        torch.testing.assert_close(describe(fresh).features(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(peft_logits(family, fresh, folder, x), model(x), atol=1e-5, rtol=0)
    assert loaded.base_model.model is fresh
    assert (base - expected).abs().max() > 1e-3  # the trained adapter changes the features


def test_the_head_file_names_labels_task_and_features(tmp_path):
    model, _ = trained("hf_vit", medpeft.LoraSettings(rank=2))
    folder = export_peft(model.model, tmp_path / "peft", labels=["normal", "tb"], task="multiclass")
    info = json.loads((folder / HEAD_CONFIG).read_text())
    assert info["labels"] == ["normal", "tb"] and info["task"] == "multiclass"
    assert info["features"] == "model(pixel_values=images, interpolate_pos_encoding=True).last_hidden_state[:, 0]"
    assert load_file(str(folder / HEAD_WEIGHTS))["weight"].shape == (2, info["in_features"])
    with pytest.raises(ConfigError, match="3 labels, but the head has 2 outputs"):
        export_peft(model.model, tmp_path / "other", labels=["a", "b", "c"])


@pytest.mark.parametrize(
    "family, settings, message",
    [
        ("open_clip", medpeft.DoraSettings(), r"^transformer\.resblocks\.0\.attn: PEFT has no DoRA for nn\.MultiheadAttention"),
        ("open_clip", medpeft.LoraSettings(targets=("q", "out")),
         r"^transformer\.resblocks\.0\.attn\.out_proj: PEFT adds the LoRA update of an nn\.MultiheadAttention's out_proj twice"),
        ("timm_eva02", medpeft.LoraSettings(), r"^blocks\.0\.attn\.qkv: timm's EvaAttention with q/v biases computes qkv with F\.linear"),
    ],
)
def test_layers_peft_cannot_wrap_are_refused_in_one_line(family, settings, message, tmp_path):
    model = medpeft.adapt(build(family), settings, num_classes=2)
    with pytest.raises(ConfigError, match=message):
        export_peft(model.model, tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_a_model_of_several_modalities_is_refused(tmp_path):
    spec = ModelSpec(BACKBONE, 2, img_size=32, model_kwargs=dict(TINY), modalities=("fundus", "oct"))
    with pytest.raises(ConfigError, match="export needs a model of one image backbone and a head; a MultiStreamViT"):
        export_peft(build_model(spec), tmp_path / "peft")
