"""One task exported merged (plain timm folder) and as ONNX, each equal to the adapter's model."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch

from medpeft.adapters_io.export import MERGED_CONFIG, export_merged, export_onnx
from medpeft.adapters_io.folder import load_adapter, save_adapter
from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.methods.lora.layer import LoRALinear
from medpeft.model import ModelSpec, build_model
from tests.methods.conftest import BACKBONE, TINY


def test_merged_folder_loads_in_plain_timm(bank_dir, images, tmp_path):
    out = export_merged(bank_dir / "blood", tmp_path / "blood")
    plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert not any(isinstance(m, LoRALinear) for m in plain.modules())
    assert type(plain) is timm.models.vision_transformer.VisionTransformer
    model, config = load_adapter(bank_dir / "blood")
    with torch.no_grad():
        torch.testing.assert_close(plain(images), model.eval()(images), rtol=0, atol=1e-4)
    saved = json.loads((out / MERGED_CONFIG).read_text())
    assert saved["label_names"] == config.labels and saved["medpeft_task"] == "multiclass"
    assert tuple(plain.pretrained_cfg["mean"]) == config.preprocessing.mean


def test_onnx_matches_onnxruntime_and_the_cli_writes_both(bank_dir, tmp_path, capsys):
    difference = export_onnx(bank_dir / "chest", tmp_path / "chest.onnx")
    assert difference < 1e-4
    argv = ["export", str(bank_dir / "tb"), "--merged", str(tmp_path / "m"), "--onnx", str(tmp_path / "tb.onnx")]
    assert main(argv) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "tb.onnx").is_file()
    assert "max abs logit difference" in capsys.readouterr().out


def test_export_needs_a_target(bank_dir, capsys):
    assert main(["export", str(bank_dir / "tb")]) == 2
    assert "--merged" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["mor", "mora"])
def test_methods_that_are_not_mergeable_are_refused_in_one_line(tmp_path, method):
    spec = ModelSpec(BACKBONE, 2, method=method, img_size=32, model_kwargs=dict(TINY))
    folder = save_adapter(build_model(spec), tmp_path / method, spec, ["a", "b"], "multiclass", backbone_seed=0)
    message = (
        f"^{re.escape(str(folder))}: method '{method}' is not mergeable \\(its layers do not fold into the backbone's weights\\); "
        "merged and ONNX export take lora, dora adapters and those that add no layers \\(linear, full\\)$"
    )
    for export in (export_merged, export_onnx):
        with pytest.raises(ConfigError, match=message):
            export(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()
