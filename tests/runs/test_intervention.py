"""Early-intervention runs from one config: stage 1 per modality, stage 2 EI, both resumable."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from medpeft.cli import main

EI = [
    "method=mor", "model.fusion=early_intervention", "data.modalities={a: image, b: image, c: image}",
    "missing.train.eta=0.0", "missing.test={eta: 0.5, kind: both}", "missing.grid.etas=[0.5]",
    "missing.grid.kinds=[a, both]", "data.num_samples=48", "data.batch_size=16", "train.epochs=1",
    "model.img_size=16", "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
    "train.amp=false", "train.device=cpu", "data.num_workers=0",
]


def _argv(run: Path) -> list[str]:
    return ["train", "mora_synthetic", f"output_dir={run}", *EI, "--quiet"]


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ei_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ei") / "run"
    assert main(_argv(run)) == 0
    return run


def test_one_config_trains_both_stages(ei_run):
    for m in "abc":
        config = json.loads((ei_run / "stage1" / m / "adapter" / "adapter_config.json").read_text())
        assert (config["fusion"], list(config["modalities"]), config["method"]) == ("auto", [m], "mor")
    config = json.loads((ei_run / "adapter" / "adapter_config.json").read_text())
    assert (config["fusion"], list(config["modalities"])) == ("early_intervention", ["a", "b", "c"])
    assert (ei_run / "report.json").is_file() and (ei_run / "grid.md").is_file()


def eval_then_predict(run: Path, rows: str, tmp_path: Path) -> list[dict[str, str]]:
    """``medpeft eval RUN`` must rewrite test_metrics.json identically; then the rows of
    ``medpeft predict`` on the manifest text ``rows`` (paths under the run's synthetic data)."""
    recorded = (run / "test_metrics.json").read_text()
    assert main(["eval", str(run)]) == 0
    assert (run / "test_metrics.json").read_text() == recorded
    manifest, out = tmp_path / "rows.csv", tmp_path / "preds.csv"
    manifest.write_text(rows)
    argv = ["predict", str(run / "adapter"), "--manifest", str(manifest), "--root", str(run / "synthetic_data"),
            "--output", str(out), "--quiet"]
    assert main(argv) == 0
    with open(out) as f:
        return list(csv.DictReader(f))


def test_eval_reproduces_the_test_metrics_and_predict_takes_a_missing_modality(ei_run, tmp_path, capsys):
    preds = eval_then_predict(
        ei_run, "id,a,b,c\nall,a/00000.png,b/00000.png,c/00000.png\nno_b,a/00000.png,,c/00000.png\n", tmp_path
    )
    labels = [k for k in preds[0] if k not in ("id", "prediction", "status", "error")]
    assert [p["id"] for p in preds] == ["all", "no_b"]
    assert all(sum(float(p[k]) for k in labels) == pytest.approx(1.0, abs=1e-3) for p in preds)
    assert [preds[0][k] for k in labels] != [preds[1][k] for k in labels]


def test_rerun_rewrites_nothing_and_an_interrupted_stage_2_resumes_alone(ei_run, tmp_path):
    before = _snapshot(ei_run)
    assert main(_argv(ei_run)) == 0
    assert _snapshot(ei_run) == before
    run = tmp_path / "run"
    shutil.copytree(ei_run, run)
    for name in ("report.json", "checkpoint.pt", "best.safetensors", "metrics.csv", "test_metrics.json"):
        (run / name).unlink()
    shutil.rmtree(run / "adapter")  # as if killed during stage 2
    stage1 = {k: v for k, v in _snapshot(run).items() if k.startswith("stage1")}
    assert main(_argv(run)) == 0
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k.startswith("stage1")} == stage1  # not retrained
    for name in ("adapter/adapter_model.safetensors", "test_metrics.json", "metrics.csv"):
        assert after[name][0] == before[name][0]


def test_early_intervention_needs_several_image_modalities(tmp_path, capsys):
    argv = ["train", "mora_synthetic", f"output_dir={tmp_path}", *EI, "data.modalities={a: image}",
            "data.positive_class=c1"]  # one modality of one bit: two classes
    assert main(argv) == 2
    assert ">= 2 image modalities" in capsys.readouterr().err


def test_late_fusion_baseline_trains_from_the_same_stage_1(tmp_path):
    run = tmp_path / "late"
    argv = _argv(run)
    argv[argv.index("model.fusion=early_intervention")] = "model.fusion=late"
    assert main(argv) == 0
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["fusion"] == "late" and (run / "stage1" / "c" / "adapter").is_dir()
    recorded = (run / "test_metrics.json").read_text()
    assert main(["eval", str(run)]) == 0
    assert (run / "test_metrics.json").read_text() == recorded


def test_both_stages_train_on_a_transformers_backbone(tmp_path):
    """EI over a tiny random-init Dinov2Model: LoRA in every copy's ``backbone``, stage 1 per modality,
    eval reproduces the run, predict takes a sample without a modality."""
    run = tmp_path / "run"
    dinov2 = ["model.kind=transformers", "model.backbone=tiny", "model.pretrained=false", "model.img_size=32",
              "model.kwargs={model_type: dinov2, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, "
              "image_size: 32, patch_size: 8}"]
    settings = [s for s in EI if not s.startswith(("method=", "data.modalities=", "model."))]
    argv = ["train", "mora_synthetic", f"output_dir={run}", "method=lora", "model.fusion=early_intervention",
            "data.modalities={a: image, b: image}", *settings, *dinov2, "--quiet"]
    assert main(argv) == 0
    for m in "ab":
        config = json.loads((run / "stage1" / m / "adapter" / "adapter_config.json").read_text())
        assert (config["kind"], config["fusion"], list(config["modalities"])) == ("transformers", "auto", [m])
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (config["kind"], config["fusion"]) == ("transformers", "early_intervention")
    saved = safe_open(run / "adapter" / "adapter_model.safetensors", "pt").keys()
    assert "references.b.backbone.encoder.layer.1.attention.v_proj.lora_A" in saved
    assert {"targets.a.head.weight", "gate.weight", "projectors.b_to_a.3.weight"} <= set(saved)

    preds = eval_then_predict(run, "id,a,b\nall,a/00000.png,b/00000.png\nno_b,a/00000.png,\n", tmp_path)
    assert [p["id"] for p in preds] == ["all", "no_b"] and all(p["status"] == "ok" for p in preds)
