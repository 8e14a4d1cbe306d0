"""Adapter files: medpeft round trips, multi-adapter loading, LoRA-ViT import, PEFT export."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import timm
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from medpeft.adapters_io.config import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config
from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.adapters_io.lora_vit import import_lora_vit
from medpeft.adapters_io.peft import export_peft
from medpeft.cli import main
from medpeft.errors import ConfigError, WeightsError
from medpeft.heads import TaskHeads
from medpeft.methods import MoraSettings
from medpeft.methods.layers import adapter_names
from medpeft.model import ModelSpec, build_model
from medpeft.routing import route

LABELS = ["normal", "tb", "other"]


@pytest.fixture
def saved(tmp_path, tiny_spec, randomize_lora, backbone_file):
    """``saved(name, spec=None, labels=LABELS)``: train-like adapter folder + its model."""

    def save(name: str, spec=None, labels=LABELS, seed: int = 1):
        spec = spec or tiny_spec(len(labels))
        model = build_model(spec, weights=backbone_file).eval()
        randomize_lora(model, seed)
        with torch.no_grad():
            model.head.weight.normal_()
        return save_adapter(model, tmp_path / name, spec, labels, "multiclass"), model

    return save


def test_round_trip_under_any_name(saved, backbone_file, images) -> None:
    folder, model = saved("tb")
    keys = set(load_file(str(folder / WEIGHTS_NAME)))
    lora_keys = {f"blocks.{i}.attn.qkv.lora_{ab}" for i in range(2) for ab in "AB"}
    assert keys == lora_keys | {"head.weight", "head.bias"}
    for name in [None, "renamed"]:
        loaded, config = load_adapter(folder, adapter_name=name, weights=backbone_file)
        assert adapter_names(loaded) == [name or "tb"]
        with torch.no_grad():
            assert torch.equal(loaded.eval()(images), model(images))
    assert config.labels == LABELS and config.settings["rank"] == 4 and config.task == "multiclass"
    assert config.method_settings().rank == 4


def test_config_records_adapter_and_preprocessing(tmp_path, tiny_spec, backbone_file) -> None:
    spec = tiny_spec(2, rank=2, alpha=1.0)
    model = build_model(spec, weights=backbone_file)
    prep = dict(size=32, mean=[0.5] * 3, std=[0.25] * 3, interpolation="bilinear", crop=0.875)
    save_adapter(model, tmp_path / "cxr", spec, ["neg", "pos"], "multilabel", prep)
    config = read_adapter_config(tmp_path / "cxr")
    assert (config.method, config.settings["rank"], config.settings["alpha"]) == ("lora", 2, 1.0)
    assert config.settings["targets"] == ["q", "v"]
    assert config.preprocessing.interpolation == "bilinear" and config.preprocessing.crop == 0.875
    assert config.model_kwargs == spec.model_kwargs and config.img_size == 32
    assert config.to_spec() == spec
    with pytest.raises(ConfigError, match="3 labels"):
        save_adapter(model, tmp_path / "bad", spec, ["a", "b", "c"], "multiclass")


@pytest.mark.parametrize("method", ["linear", "full"])
def test_round_trip_other_methods(tmp_path, tiny_spec, backbone_file, images, method) -> None:
    spec = dataclasses.replace(tiny_spec(), method=method, settings=None)  # the method's defaults
    model = build_model(spec, weights=backbone_file).eval()
    with torch.no_grad():
        for param in model.parameters() if method == "full" else model.head.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    save_adapter(model, tmp_path / method, spec, LABELS, "multiclass")
    loaded, config = load_adapter(tmp_path / method, weights=backbone_file)
    assert config.method == method and "rank" not in config.settings
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), model(images))


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        (dict(embed_dim=48), r"cls_token: expected \(1, 1, 32\), got \(1, 1, 48\)"),
        (dict(img_size=64), "pos_embed"),
        (dict(depth=3), "depth: expected 2, got 3"),
        (dict(backbone="deit_tiny_patch16_224"), "architecture: expected vit_tiny_patch16_224"),
    ],
)
def test_backbone_mismatch_is_clear(saved, tiny_spec, kwargs, culprit) -> None:
    folder, _ = saved("tb")
    spec = tiny_spec()
    spec.img_size = kwargs.pop("img_size", spec.img_size)
    spec.backbone = kwargs.pop("backbone", spec.backbone)
    spec.model_kwargs.update(kwargs)
    other = build_model(spec)
    with pytest.raises(WeightsError, match=culprit) as error:
        load_adapter(folder, other)
    assert str(folder) in str(error.value) and adapter_names(other) == ["default"]


def test_many_adapters_on_one_backbone(tmp_path, saved, tiny_spec, backbone_file, images) -> None:
    tb, tb_model = saved("tb")
    cells_spec = tiny_spec(4, targets=("q", "v", "mlp.fc1"), rank=2, alpha=4.0, blocks=(1,))
    labels = ["a", "b", "c", "d"]
    cells, cells_model = saved("cells", cells_spec, labels, seed=2)
    model, _ = load_adapter(tb, weights=backbone_file)
    load_adapter(cells, model)
    model.eval()
    assert adapter_names(model) == ["tb", "cells"] and isinstance(model.head, TaskHeads)
    with torch.no_grad():
        assert torch.equal(model(images), tb_model(images))  # unrouted: the first adapter loaded
        with route(adapters="cells"):
            routed = model(images)
        assert torch.equal(routed, cells_model(images))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.heads.tb.weight", "head.heads.cells.bias"} <= trainable
    with pytest.raises(ConfigError, match="already has an adapter named 'tb'"):
        load_adapter(tb, model)
    resaved = save_adapter(model, tmp_path / "re", cells_spec, labels, "multiclass", None, "cells")
    alone, _ = load_adapter(resaved, weights=backbone_file)
    with torch.no_grad():
        assert torch.equal(alone.eval()(images), cells_model(images))


def test_save_refuses_a_spec_that_does_not_describe_the_adapter(tmp_path, tiny_spec) -> None:
    model = build_model(tiny_spec(targets=("q", "v", "mlp.fc1")))
    with pytest.raises(ConfigError, match="mlp.fc1"):
        save_adapter(model, tmp_path / "x", tiny_spec(), LABELS, "multiclass")


def test_bad_tensor_file_leaves_model_unchanged(saved, backbone_file, images) -> None:
    tb, _ = saved("tb")
    other, _ = saved("other", seed=3)
    state = load_file(str(other / WEIGHTS_NAME))
    del state["blocks.1.attn.qkv.lora_B"]
    save_file(state, str(other / WEIGHTS_NAME))
    model, _ = load_adapter(tb, weights=backbone_file)
    before = model.eval()(images)
    with pytest.raises(WeightsError, match="blocks.1.attn.qkv.lora_B"):
        load_adapter(other, model)
    assert adapter_names(model) == ["tb"] and torch.equal(model(images), before)


@pytest.mark.parametrize(
    "edit, culprit",
    [
        (lambda c: c.pop("labels"), "labels"),
        (lambda c: c["settings"].update(rank="four"), "rank"),
        (lambda c: c.update(task="regression"), "task"),
        (lambda c: c["preprocessing"].update(mean=[0.5, 0.5]), "mean"),
        (lambda c: c.update(method="prompt"), "method"),
        (lambda c: c.update(colour="blue"), "colour"),
    ],
)
def test_invalid_config_names_file_and_field(saved, edit, culprit) -> None:
    folder, _ = saved("tb")
    config = json.loads((folder / CONFIG_NAME).read_text())
    edit(config)
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=culprit) as error:
        read_adapter_config(folder)
    assert CONFIG_NAME in str(error.value)


@pytest.mark.parametrize("method", ["lora", "mora"])
def test_an_edited_preprocessing_size_is_refused_naming_the_field(tmp_path, tiny_spec, method) -> None:
    spec = tiny_spec() if method == "lora" else ModelSpec(
        "vit_tiny_patch16_224", 3, "mora", MoraSettings(rank=4, blocks=(0,)), img_size=32, modalities=("a", "b"),
        model_kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    folder = save_adapter(build_model(spec), tmp_path / method, spec, LABELS, "multiclass", backbone_seed=0)
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["preprocessing"]["size"] = 40  # a MoRA model's blocks are wrapped: no family reads them
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        load_adapter(folder)
    assert str(error.value) == (f"{folder / CONFIG_NAME}: preprocessing.size 40 does not fit the model: "
                                "VisionTransformer (timm) takes 32 px images only (the img_size it was built at)")


def test_unreadable_config(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_adapter_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        read_adapter_config(tmp_path)


def lora_vit_state(depth: int = 2, dim: int = 32, rank: int = 4, classes: int = 3) -> dict:
    """A LoRA-ViT/MeLo file's tensors: w_a/w_b per q (even) and v (odd), head weight."""
    g = torch.Generator().manual_seed(5)
    state = {f"w_a_{i:03d}": torch.randn(rank, dim, generator=g) * 0.3 for i in range(2 * depth)}
    state |= {f"w_b_{i:03d}": torch.randn(dim, rank, generator=g) * 0.3 for i in range(2 * depth)}
    state[f"fc_{dim}in_{classes}out"] = torch.randn(classes, dim, generator=g)
    return state


def reference_logits(vit, x, state, scale):
    """ViT forward with MeLo's q/v deltas computed by hand inside self-attention."""
    dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    for i, block in enumerate(vit.blocks):
        t = block.norm1(h)
        qkv = t @ block.attn.qkv.weight.T + block.attn.qkv.bias
        a_q, b_q = state[f"w_a_{2 * i:03d}"], state[f"w_b_{2 * i:03d}"]
        a_v, b_v = state[f"w_a_{2 * i + 1:03d}"], state[f"w_b_{2 * i + 1:03d}"]
        q = qkv[..., :dim] + scale * t @ a_q.T @ b_q.T
        k = qkv[..., dim : 2 * dim]
        v = qkv[..., 2 * dim :] + scale * t @ a_v.T @ b_v.T
        q, k, v = (z.unflatten(-1, (heads, dim // heads)).transpose(1, 2) for z in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(dim // heads), dim=-1)
        h = h + block.attn.proj((weights @ v).transpose(1, 2).flatten(-2))
        h = h + block.mlp(block.norm2(h))
    return vit.norm(h)[:, 0] @ state[f"fc_{dim}in_3out"].T


@pytest.mark.parametrize(
    "file_name, scale", [("melo_lora_4_8.safetensors", 2.0), ("tb.safetensors", 1.0)]
)
def test_import_lora_vit_matches_reference(
    tmp_path, tiny_spec, tiny_vit, backbone_file, images, file_name, scale
) -> None:
    state = lora_vit_state()
    save_file(state, str(tmp_path / file_name))
    model = import_lora_vit(tmp_path / file_name, tiny_spec(), weights=backbone_file).eval()
    vit = tiny_vit()
    vit.load_state_dict(load_file(str(backbone_file)))
    with torch.no_grad():
        expected = reference_logits(vit, images, state, scale)
        torch.testing.assert_close(model(images), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(reference_logits(vit, images, state, 0.0), expected, atol=1e-3)


def test_import_lora_vit_into_existing_model(
    tmp_path, saved, tiny_spec, backbone_file, images
) -> None:
    path = tmp_path / "melo_lora_4_4.safetensors"
    save_file(lora_vit_state(), str(path))
    alone = import_lora_vit(path, tiny_spec(), weights=backbone_file).eval()
    model, _ = load_adapter(saved("tb")[0], weights=backbone_file)
    import_lora_vit(path, model)
    assert adapter_names(model) == ["tb", "melo_lora_4_4"]
    with torch.no_grad():
        with route(adapters="melo_lora_4_4"):
            routed = model.eval()(images)
        assert torch.equal(routed, alone(images))


def test_cli_import_lora_vit_writes_a_loadable_adapter(tmp_path, images, capsys) -> None:
    """``medpeft import-lora-vit`` on a real timm name (ViT-Ti at 32 px: depth 12, dim 192)."""
    backbone = "vit_tiny_patch16_224"
    torch.manual_seed(0)
    vit = timm.create_model(backbone, num_classes=3, img_size=32)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    path = tmp_path / "melo_lora_4_8.safetensors"
    save_file(lora_vit_state(depth=12, dim=192), str(path))
    common = ["import-lora-vit", str(path), "--backbone", backbone, "--img-size", "32"]
    out = tmp_path / "adapter"
    labeled = [*common, "--labels", *LABELS, "--weights", str(weights)]
    assert main([*labeled, "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config = read_adapter_config(out)
    settings = config.method_settings()
    assert (config.labels, settings.rank, settings.alpha, config.img_size) == (LABELS, 4, 8.0, 32)
    loaded, _ = load_adapter(out, weights=weights)
    direct = import_lora_vit(path, ModelSpec(backbone, 3, img_size=32), weights=weights)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(images), direct.eval()(images))
    assert main([*common, "--output", str(tmp_path / "plain")]) == 0
    assert read_adapter_config(tmp_path / "plain").labels == ["class_0", "class_1", "class_2"]
    assert main([*common, "--labels", "a", "b", "--output", str(tmp_path / "bad")]) == 2
    assert "2 labels given" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_cli_import_lora_vit_replaces_an_adapter_only_with_force(tmp_path, capsys) -> None:
    path = tmp_path / "melo_lora_4_8.safetensors"
    save_file(lora_vit_state(depth=12, dim=192), str(path))
    out = tmp_path / "adapter"
    common = ["import-lora-vit", str(path), "--backbone", "vit_tiny_patch16_224", "--img-size", "32",
              "--output", str(out)]
    assert main(common) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main([*common, "--labels", *LABELS]) == 2
    err = capsys.readouterr().err
    assert err == (f"medpeft import-lora-vit: error: --output: {out} already holds an adapter (adapter_config.json, "
                   "adapter_model.safetensors); refusing to overwrite it. Choose another folder, or pass --force "
                   "to replace it (Python: overwrite=True)\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*common, "--labels", *LABELS, "--force"]) == 0
    assert read_adapter_config(out).labels == LABELS


@pytest.mark.parametrize(
    "edit, file_name, culprit",
    [
        (lambda s: s.pop("w_b_003"), "x_lora_4_4.safetensors", "w_b_003"),
        (lambda s: s.update(w_a_001=torch.zeros(4, 16)), "x.safetensors", "w_a_001"),
        (lambda s: s.update(w_a_004=torch.zeros(4, 32)), "x.safetensors", "w_a_004"),
        (lambda s: s.pop("fc_32in_3out"), "x.safetensors", "fc_<dim>in_<C>out"),
        (lambda s: None, "x_lora_8_8.safetensors", "rank 8"),
    ],
)
def test_import_lora_vit_errors_name_the_tensor(
    tmp_path, tiny_spec, edit, file_name, culprit
) -> None:
    state = lora_vit_state()
    edit(state)
    save_file(state, str(tmp_path / file_name))
    with pytest.raises(WeightsError, match=culprit):
        import_lora_vit(tmp_path / file_name, tiny_spec())


@pytest.mark.parametrize(
    "lora, targets, rank",
    [
        (dict(), ["qkv"], 8),
        (dict(targets=("q", "v", "mlp.fc1"), rank=2, alpha=3.0, blocks=(1,)), None, 4),
    ],
)
def test_export_peft_loads_in_peft(
    tmp_path, tiny_spec, tiny_vit, randomize_lora, backbone_file, images, lora, targets, rank
) -> None:
    model = build_model(tiny_spec(**lora), weights=backbone_file).eval()
    randomize_lora(model)
    with torch.no_grad():
        model.head.bias.normal_()
    export_peft(model, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["modules_to_save"]) == ("LORA", rank, ["head"])
    assert config["target_modules"] == (targets or ["blocks.1.attn.qkv", "blocks.1.mlp.fc1"])
    assert config["lora_alpha"] == rank * model.blocks[1].attn.qkv.scaling["default"]
    keys = set(load_file(str(tmp_path / "peft" / "adapter_model.safetensors")))
    assert "base_model.model.blocks.1.attn.qkv.lora_A.weight" in keys
    assert "base_model.model.head.weight" in keys
    fresh = tiny_vit()
    fresh.load_state_dict(load_file(str(backbone_file)))
    with torch.no_grad():
        base = fresh(images)
        peft_model = PeftModel.from_pretrained(fresh, tmp_path / "peft").eval()
        expected = model(images)
        torch.testing.assert_close(peft_model(images), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(base, expected, atol=1e-3)
