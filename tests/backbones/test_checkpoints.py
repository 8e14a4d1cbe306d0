"""Backbone identity: sha256 of local checkpoints and folders, repo (and commit) of hub weights."""

from __future__ import annotations

import hashlib

import huggingface_hub
import timm

import medpeft  # noqa: F401  (torchvision shim before timm)
from medpeft.backbones.checkpoints import (
    BackboneIdentity,
    backbone_identity,
    identity_mismatch,
    weights_sha256,
)

TINY = dict(depth=1, embed_dim=32, num_heads=2, patch_size=8, img_size=32)


def test_a_folder_hashes_its_weight_files_in_name_order(tmp_path) -> None:
    folder = tmp_path / "dinov2"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert weights_sha256(folder) is None  # no weights to identify
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"second")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"first")
    digest = weights_sha256(folder)
    lines = "".join(f"model-0000{i}-of-00002.safetensors {hashlib.sha256(d).hexdigest()}\n"
                    for i, d in ((1, b"first"), (2, b"second")))
    assert digest == hashlib.sha256(lines.encode()).hexdigest()
    (folder / "config.json").write_text('{"other": 1}')  # not a weights file
    assert weights_sha256(folder) == digest
    (folder / "model-00002-of-00002.safetensors").write_bytes(b"SECOND")
    assert weights_sha256(folder) != digest


def test_local_weights_win_and_a_transformers_folder_name_counts(tmp_path) -> None:
    file = tmp_path / "vit.safetensors"
    file.write_bytes(b"abc")
    assert backbone_identity("timm", "vit_tiny_patch16_224", file, False) == BackboneIdentity(
        sha256=hashlib.sha256(b"abc").hexdigest(), source=str(file))
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    assert backbone_identity("transformers", str(folder), None, False).sha256 == weights_sha256(folder)
    assert backbone_identity("timm", "vit_tiny_patch16_224", None, False) == BackboneIdentity()  # random


def test_hub_weights_are_named_by_repo_and_by_the_cached_file_when_there(tmp_path, monkeypatch) -> None:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY)
    repo = model.pretrained_cfg["hf_hub_id"]
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert backbone_identity("timm", "vit_tiny_patch16_224", None, True, model) == BackboneIdentity(hub=repo)
    cached = tmp_path / "snapshots" / "c0ffee" / "model.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"hub weights")
    asked = []

    def lookup(repo_id, filename, revision=None):
        asked.append((repo_id, filename))
        return str(cached) if filename == "pytorch_model.bin" else None

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lookup)
    identity = backbone_identity("timm", "vit_tiny_patch16_224", None, True, model)
    assert identity == BackboneIdentity(hashlib.sha256(b"hub weights").hexdigest(), f"{repo}@c0ffee", str(cached))
    assert asked[0] == (repo, "model.safetensors")  # timm's first choice is looked up first


def test_mismatches_compare_what_both_sides_know() -> None:
    a, b = "a" * 64, "b" * 64
    assert identity_mismatch(BackboneIdentity(a), BackboneIdentity(a, source="w")) is None
    assert identity_mismatch(BackboneIdentity(a), BackboneIdentity(b, source="/w.safetensors")) == (
        f"/w.safetensors has sha256 {b}, the adapter records sha256 {a}")
    assert identity_mismatch(BackboneIdentity(hub="timm/x@1"), BackboneIdentity(hub="timm/x")) is None
    assert identity_mismatch(BackboneIdentity(hub="timm/x@1"), BackboneIdentity(hub="timm/x@2")) is not None
    assert identity_mismatch(BackboneIdentity(hub="timm/x"), BackboneIdentity(hub="timm/y")) is not None
    assert identity_mismatch(BackboneIdentity(a), BackboneIdentity(hub="timm/x")) is None  # nothing to compare


def test_transformers_hub_weights_are_named_by_their_repo(monkeypatch) -> None:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model("dinov2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, image_size=32, patch_size=8)
    model = AutoModel.from_config(config)
    assert backbone_identity("transformers", "facebook/dinov2-small", None, True, model) == BackboneIdentity()
    model.config._name_or_path = "facebook/dinov2-small"  # as from_pretrained sets it
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    identity = backbone_identity("transformers", "facebook/dinov2-small", None, True, model)
    assert identity == BackboneIdentity(hub="facebook/dinov2-small")
    assert backbone_identity("open_clip", "ViT-B-16", None, True, model) == BackboneIdentity()  # unknown
