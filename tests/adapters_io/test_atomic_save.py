"""Adapter folders are written whole or not at all: a failed save leaves the previous adapter intact."""

from __future__ import annotations

import os

import pytest
import torch

from medpeft import atomic
from medpeft.adapters_io import folder as folder_module
from medpeft.adapters_io.config import CONFIG_NAME, WEIGHTS_NAME
from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.errors import ConfigError
from medpeft.model import build_model
from tests.runs.conftest import snapshot

LABELS = ["normal", "tb", "other"]


@pytest.fixture
def save(tmp_path, tiny_spec, randomize_lora, backbone_file):
    """``save(seed)``: save an adapter of random LoRA ``seed`` into ``tmp_path/out/tb``."""
    spec = tiny_spec(len(LABELS))

    def write(seed: int):
        model = build_model(spec, weights=backbone_file).eval()
        randomize_lora(model, seed)
        return save_adapter(model, tmp_path / "out" / "tb", spec, LABELS, "multiclass", backbone_weights=backbone_file)

    return write


def failing_config_write(monkeypatch) -> None:
    def fail(config, out_dir):
        raise OSError(28, "No space left on device", str(out_dir))

    monkeypatch.setattr(folder_module, "write_adapter_config", fail)


def test_a_failed_first_save_leaves_no_folder(save, monkeypatch, tmp_path) -> None:
    failing_config_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save(1)
    assert os.listdir(tmp_path / "out") == []  # no weights without a config, no temporary folder


def test_a_failed_save_keeps_the_previous_adapter_intact(save, monkeypatch, tmp_path, images) -> None:
    folder = save(1)
    before = snapshot(folder)
    failing_config_write(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        save(2)
    assert snapshot(folder) == before
    assert os.listdir(tmp_path / "out") == ["tb"]
    load_adapter(folder)


def test_a_failed_swap_puts_the_old_adapter_back(save, monkeypatch, tmp_path) -> None:
    folder = save(1)
    before = snapshot(folder)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder onto the adapter's place
            raise OSError(13, "Permission denied", str(dst))
        real(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="Permission denied"):
        save(2)
    assert snapshot(folder) == before and os.listdir(tmp_path / "out") == ["tb"]


def test_a_save_replaces_the_whole_adapter(save, images, backbone_file) -> None:
    folder = save(1)
    first, _ = load_adapter(folder)
    save(2)
    second, _ = load_adapter(folder)
    assert sorted(os.listdir(folder)) == [CONFIG_NAME, WEIGHTS_NAME]
    with torch.no_grad():
        assert not torch.allclose(first.eval()(images), second.eval()(images))


def test_a_folder_holding_other_files_is_not_replaced(save, tmp_path) -> None:
    notes = tmp_path / "out" / "tb" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    with pytest.raises(ConfigError, match=r"out/tb holds other files \(notes.txt\) that writing "
                                          r"adapter_config.json, adapter_model.safetensors there would lose"):
        save(1)
    assert os.listdir(notes.parent) == ["notes.txt"] and os.listdir(tmp_path / "out") == ["tb"]
