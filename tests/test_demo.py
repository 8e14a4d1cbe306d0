"""The demo's whole pipeline, shortened to one epoch per stage on a small dataset."""

from medpeft.demo import METHODS, run_demo


def test_demo_runs_every_stage_and_writes_summary(tmp_path, capsys):
    reports = run_demo(tmp_path, epochs=1, progress=False, pretrain_epochs=1, samples_per_class=10)
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
    again = run_demo(tmp_path, epochs=1, progress=False, pretrain_epochs=1, samples_per_class=10)
    assert adapter.stat().st_mtime_ns == before
    assert again["lora"].test_metrics == lora.test_metrics
