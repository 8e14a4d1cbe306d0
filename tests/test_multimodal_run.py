"""Multimodal runs end to end: synthetic through the CLI, ViLT on the ODIR layout, bad configs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from medpeft.cli import builtin_configs, main
from medpeft.data.missing import MissingSetting, MissingTable
from medpeft.errors import ConfigError
from medpeft.multimodal_config import load_multimodal_config
from medpeft.multimodal_runner import evaluate_multimodal_run, train_multimodal

CPU = ["train.amp=false", "train.device=cpu", "data.num_workers=0"]
TINY_SYNTHETIC = [
    "model.img_size=16",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
    "data.num_samples=40",
    "data.batch_size=16",
    "missing.grid.etas=[0.3, 0.9]",
    *CPU,
]


def _epochs(run: Path) -> list[str]:
    with open(run / "metrics.csv") as f:
        return [row["epoch"] for row in csv.DictReader(f)]


def _train_synthetic(run: Path, *extra: str) -> None:
    argv = ["train", "mora_synthetic", f"output_dir={run}", *TINY_SYNTHETIC, *extra, "--quiet"]
    assert main(argv) == 0


def test_synthetic_cli_run_writes_tables_grid_and_resumes(tmp_path, capsys):
    run = tmp_path / "run"
    _train_synthetic(run, "train.epochs=1")
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
    assert "f1_macro \\ eta" in capsys.readouterr().out

    _train_synthetic(run, "train.epochs=2")  # resumes after epoch 0
    assert _epochs(run) == ["0", "1"]
    resumed = json.loads((run / "test_metrics.json").read_text())

    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # rebuilds the same model from the run folder
    assert "| both |" in capsys.readouterr().out
    evaluated = json.loads((run / "test_metrics.json").read_text())
    assert evaluated == pytest.approx(resumed, nan_ok=True)


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
    config = load_multimodal_config(builtin_configs()["mora_odir"], overrides)
    report = train_multimodal(config, progress=False)
    dim, rank = tiny_vilt_fields["hidden_size"], 4
    head = dim * 2 * dim + 2 * dim + 2 * 2 * dim + 2 * dim * 8 + 8  # Linear, LayerNorm, Linear
    pooler = dim * dim + dim
    assert report.params.trainable == dim * rank + 2 * rank * dim + pooler + head
    assert set(report.test.grid) == {("image", 0.5), ("text", 0.5), ("both", 0.5)}
    assert "f1_macro" in report.test.metrics

    again = evaluate_multimodal_run(report.run_dir, overrides=CPU)
    assert again.metrics == pytest.approx(report.test.metrics, nan_ok=True)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.kind=cnn", "model.kind"),
        ("missing.train.kind=sound", "missing.train.kind"),
        ("missing.grid.kinds=[a, c]", "missing.grid.kinds"),
        ("data.shuffle=true", "shuffle"),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(tmp_path, capsys, override, key):
    argv = ["train", "mora_synthetic", f"output_dir={tmp_path}", *TINY_SYNTHETIC, override]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    with pytest.raises(ConfigError, match=key):
        config = load_multimodal_config(builtin_configs()["mora_synthetic"], [override])
        config.missing.check(("a", "b"))
