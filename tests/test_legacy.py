"""Adapter and run folders written by medpeft 0.1 still load and give the same logits.

The fixtures under ``tests/fixtures/v0_1`` were written by the 0.1 code: a LoRA and a
linear-probe adapter (format 1) on a tiny ViT checkpoint, a MoRA run folder of the
synthetic two-modality task (``trainable.safetensors`` + ``model_spec.json``), and the
logits 0.1 computed on fixed inputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medpeft.adapters_io.config import read_adapter_config
from medpeft.adapters_io.folder import load_adapter
from medpeft.cli import main
from medpeft.config import load_config

FIXTURES = Path(__file__).parent / "fixtures" / "v0_1"
EXPECTED = load_file(str(FIXTURES / "expected.safetensors"))


@pytest.mark.parametrize("method", ["lora", "linear"])
def test_format_1_adapters_give_the_same_logits(method):
    model, config = load_adapter(FIXTURES / f"{method}_adapter")
    assert config.method == method and config.modalities == {"image": "image"}
    if method == "lora":
        assert config.settings == {"targets": ["q", "v"], "blocks": None, "rank": 4, "alpha": 8.0, "dropout": 0.0}
    with torch.no_grad():
        logits = model.eval()(EXPECTED["lora_images"])
    # recorded on the unmerged path; eval + no_grad now runs LoRA on a merged weight, whose
    # sums round differently (float32, logits ~1): within the 1e-5 it promises
    torch.testing.assert_close(logits, EXPECTED[f"{method}_logits"], rtol=0, atol=1e-5)


def test_mora_run_folder_adapter_gives_the_same_logits():
    run = load_config(FIXTURES / "mora_run" / "config.yaml")
    model, config = load_adapter(FIXTURES / "mora_run" / "adapter")  # random backbone from train.seed
    assert config.backbone_seed == run.train.seed
    assert (config.method, config.modalities) == ("mora", {"a": "image", "b": "image"})
    batch = {
        "images": {"a": EXPECTED["mora_a"], "b": EXPECTED["mora_b"]},
        "present": EXPECTED["mora_present"].bool(),
    }
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(batch), EXPECTED["mora_logits"], rtol=0, atol=1e-6)


def test_eval_of_a_0_1_mora_run_reproduces_its_test_metrics(tmp_path, capsys):
    run = tmp_path / "mora_run"
    shutil.copytree(FIXTURES / "mora_run", run)
    recorded = json.loads((run / "test_metrics.json").read_text())
    assert main(["eval", str(run)]) == 0
    assert "f1_macro" in capsys.readouterr().out
    again = json.loads((run / "test_metrics.json").read_text())
    assert again.keys() == recorded.keys()
    for key, value in recorded.items():
        assert again[key] == pytest.approx(value, abs=1e-9), key
    assert (run / "grid.md").is_file()


def test_0_1_multimodal_config_loads_with_its_old_defaults():
    config = load_config(FIXTURES / "mora_run" / "config.yaml")
    assert (config.model.kind, config.data.resize, config.data.augment) == ("timm", "squash", False)
    assert config.data.test_fraction == 0.1 and config.method_settings().rank == 4


def test_format_1_config_reads_as_format_2():
    config = read_adapter_config(FIXTURES / "lora_adapter")
    assert config.format_version == 2 and config.method_settings().alpha == 8.0
