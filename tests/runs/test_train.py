"""``medpeft train`` / ``medpeft.runs.train``: one pipeline for one modality and several.

One image modality (LoRA, CSV manifest, through the CLI), two synthetic image
modalities (MoRA, missing tables and test grid, through the CLI) and ViLT image +
text on the ODIR layout (through the Python API).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medpeft import checkpointing
from medpeft.cli import builtin_configs, main
from medpeft.config import load_config
from medpeft.data.missing import MissingSetting, MissingTable
from medpeft.run_layout import ADAPTER_DIR, CONFIG
from medpeft.runs.evaluate import evaluate_run
from medpeft.runs.train import RunReport, train_run
from medpeft.train.files import METRICS_CSV

from .conftest import CPU


def _epochs(run: Path) -> list[str]:
    with open(run / METRICS_CSV) as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def test_one_modality_run_writes_run_folder_and_resumes(tmp_path, train_image, capsys):
    run = train_image(tmp_path / "run", "train.epochs=2")
    config = yaml.safe_load((run / CONFIG).read_text())
    assert config["train"]["epochs"] == 2 and config["lora"]["rank"] == 4
    adapter = json.loads((run / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["labels"] == ["lesion", "normal"] and adapter["modalities"] == {"image": "image"}
    assert "auroc" in json.loads((run / "test_metrics.json").read_text())
    assert _epochs(run) == ["0", "1"]
    assert "| run |" in capsys.readouterr().out
    assert not list(run.glob("missing_*.csv")) and not (run / "grid.md").exists()  # one modality
    # Asking for more epochs continues from the checkpoint: epochs 0-1 are not repeated.
    train_image(run, "train.epochs=3")
    assert _epochs(run) == ["0", "1", "2"]


def test_two_modality_run_writes_tables_grid_and_resumes(tmp_path, train_synthetic, capsys):
    run = train_synthetic(tmp_path / "run", "train.epochs=1")
    printed = capsys.readouterr().out
    for split in ("train", "val", "test"):
        table = MissingTable.load(run / f"missing_{split}.csv")
        assert table.setting == MissingSetting(0.7, "both") and table.modalities == ("a", "b")
    grid = (run / "grid.md").read_text()
    for kind in ("a", "b", "both"):
        row = next(line for line in grid.splitlines() if line.startswith(f"| {kind} |"))
        assert row.count("|") == 4 and " - " not in row  # kind + 2 etas, every cell filled
    assert len(json.loads((run / "grid.json").read_text())) == 6
    assert (run / "grid_heatmap.png").stat().st_size > 0
    assert (run / "grid_curves.png").stat().st_size > 0
    test_metrics = json.loads((run / "test_metrics.json").read_text())
    assert 0.0 <= test_metrics["f1_macro"] <= 1.0
    adapter = json.loads((run / ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter["method"] == "mora" and adapter["modalities"] == {"a": "image", "b": "image"}
    assert (run / ADAPTER_DIR / "adapter_model.safetensors").is_file()

    train_synthetic(run, "train.epochs=2")  # resumes after epoch 0
    assert _epochs(run) == ["0", "1"]
    resumed = json.loads((run / "test_metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # rebuilds the resumed model from the run folder
    assert "| both |" in capsys.readouterr().out
    evaluated = json.loads((run / "test_metrics.json").read_text())
    assert evaluated == pytest.approx(resumed, nan_ok=True)
    assert "f1_macro \\ eta" in printed  # the console report shows the grid pivot


def test_vilt_mora_run_on_odir_layout(tmp_path, make_odir, tiny_vilt_fields, vocab_dir):
    root = make_odir(tmp_path / "odir", patients=12)
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        f"data.root={root}",
        "model.pretrained=false",
        f"model.vilt_config={json.dumps(tiny_vilt_fields)}",
        f"model.tokenizer={vocab_dir}",
        "model.img_size=32",
        "model.max_text_len=8",
        "data.batch_size=4",
        "train.epochs=1",
        "missing.grid.etas=[0.5]",
        *CPU,
    ]
    config = load_config(builtin_configs()["mora_odir"], overrides)
    report = train_run(config, progress=False)
    assert isinstance(report, RunReport) and report.test_metrics == report.test.metrics
    dim, rank = tiny_vilt_fields["hidden_size"], 4
    head = dim * 2 * dim + 2 * dim + 2 * 2 * dim + 2 * dim * 8 + 8  # Linear, LayerNorm, Linear
    pooler = dim * dim + dim
    assert report.params.trainable == dim * rank + 2 * rank * dim + pooler + head
    assert set(report.test.grid) == {("image", 0.5), ("text", 0.5), ("both", 0.5)}
    assert "f1_macro" in report.test.metrics

    again = evaluate_run(report.run_dir, overrides=CPU)
    assert again.metrics == pytest.approx(report.test.metrics, nan_ok=True)


def test_a_checkpointed_mora_run_trains_the_same_adapter(tmp_path, mora_run, train_synthetic, monkeypatch):
    calls = []
    plain_checkpoint = checkpointing.checkpoint
    monkeypatch.setattr(checkpointing, "checkpoint", lambda *a, **k: calls.append(1) or plain_checkpoint(*a, **k))
    run = train_synthetic(tmp_path / "run", "train.epochs=1", "train.activation_checkpointing=true")
    assert calls  # the blocks did run under checkpoint
    assert yaml.safe_load((run / CONFIG).read_text())["train"]["activation_checkpointing"] is True
    ours, plain = (load_file(r / ADAPTER_DIR / "adapter_model.safetensors") for r in (run, mora_run))
    assert ours.keys() == plain.keys()
    for key in plain:
        torch.testing.assert_close(ours[key], plain[key], atol=1e-5, rtol=1e-4)
