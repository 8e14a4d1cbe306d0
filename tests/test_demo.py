"""The demo's whole pipeline, shortened to one epoch per stage on a small dataset."""

import csv
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import medpeft.demo
from medpeft.backbones import build_vit
from medpeft.backbones.weights import fit_state_dict
from medpeft.cli import main
from medpeft.data.synthetic import PAIR_CLASSES, make_pairs_dataset
from medpeft.demo import METHODS, run_demo


def test_demo_runs_every_stage_and_writes_summary(tmp_path, capsys):
    reports = run_demo(tmp_path, epochs=1, progress=False, pretrain_epochs=1, samples_per_class=10,
                       pretrain_samples=10)
    assert set(reports) == set(METHODS)
    backbone = tmp_path / "pretrain" / "adapter" / "adapter_model.safetensors"
    assert backbone.is_file()
    lora, linear, full = reports["lora"], reports["linear"], reports["full"]
    # LoRA trains more than the head alone, far less than everything.
    assert linear.params.trainable < lora.params.trainable < full.params.trainable
    assert full.params.trainable == full.params.total
    assert lora.adapter_bytes < full.adapter_bytes / 10
    assert all(0.0 <= r.test_metrics["accuracy"] <= 1.0 for r in reports.values())
    summary = (tmp_path / "summary.md").read_text()
    assert all(f"| {m} |" in summary for m in METHODS)
    assert "Test-set results" in capsys.readouterr().out
    # A report page per method, linked from the comparison page.
    comparison = (tmp_path / "index.html").read_text()
    for method in METHODS:
        assert (tmp_path / method / "report" / "index.html").is_file()
        assert f'href="{method}/report/index.html"' in comparison
    # Rerunning into the finished demo reports it again without retraining or rewriting.
    adapter = tmp_path / "lora" / "adapter" / "adapter_model.safetensors"
    before = adapter.stat().st_mtime_ns
    again = run_demo(tmp_path, epochs=1, progress=False, pretrain_epochs=1, samples_per_class=10,
                     pretrain_samples=10)
    assert adapter.stat().st_mtime_ns == before
    assert again["lora"].test_metrics == lora.test_metrics


def test_pairs_dataset_is_balanced_and_reproducible(tmp_path):
    first = make_pairs_dataset(tmp_path / "a", n_per_class=6, img_size=16, seed=3)
    again = make_pairs_dataset(tmp_path / "b", n_per_class=6, img_size=16, seed=3)
    rows = list(csv.DictReader(first.open()))
    assert Counter(r["label"] for r in rows) == dict.fromkeys(PAIR_CLASSES, 6)
    assert first.read_text() == again.read_text()
    assert all((first.parent / r["image"]).read_bytes() == (again.parent / r["image"]).read_bytes()
               for r in rows)
    # Normal images show no blob: they are darker than images with two blobs.
    mean = {c: np.mean([np.asarray(Image.open(first.parent / r["image"])).mean() for r in rows
                        if r["label"] == c]) for c in PAIR_CLASSES}
    assert mean["normal"] < mean["one_sided"] < min(mean["symmetric"], mean["asymmetric"])


def _load_pretrained_with_a_head(out, **_) -> None:
    """What the demo's adaptation runs do with the pretrained checkpoint: leave its head out."""
    model = build_vit("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    fit_state_dict(model.state_dict(), model.state_dict(), out / "backbone.safetensors", "timm", fresh=("head.",))


@pytest.mark.parametrize(("options", "shown"), [(["--quiet"], False), ([], True)])
def test_demo_quiet_leaves_out_the_log_lines(tmp_path, monkeypatch, capsys, options, shown):
    monkeypatch.setattr(medpeft.demo, "run_demo", _load_pretrained_with_a_head)
    assert main(["demo", "--output", str(tmp_path), *options]) == 0
    line = f"{tmp_path / 'backbone.safetensors'}: left out 2 tensor(s) that are not part of the encoder: head.* (2)"
    assert (line in capsys.readouterr().err) is shown
