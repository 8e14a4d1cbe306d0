"""Smoke test of benchmarks/memory.py on a small timm ViT in this process: every kind of
configuration builds and trains, the planned skips say why, the table has a row per config."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from medpeft.frozen_dtype import is_quantized

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("memory_bench", ROOT / "benchmarks" / "memory.py")
bench = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(bench)
SMALL = "vit_tiny_patch16_224"


@pytest.mark.parametrize("config", ["full", "lora+ckpt+bf16", "peft+ckpt+bf16", "lora+ckpt+int8", "peft+ckpt+int8",
                                    "lora+ckpt+bf16+amp"])
def test_each_kind_of_configuration_trains_and_is_measured(config):
    row = bench.measure(SMALL, config, batch=2, steps=2, device="cpu")
    assert row["peak_gib"] > row["increment_gib"] > 0 and row["step_s"] > 0
    assert 0 < row["trainable"] < 6e6 if config != "full" else row["trainable"] > 5e6


def test_the_builds_are_what_the_configuration_names():
    torch.manual_seed(0)
    lora = bench.build(SMALL, "lora+ckpt+bf16")
    assert lora.get_parameter("blocks.0.attn.qkv.base.weight").dtype == torch.bfloat16
    assert lora.blocks[0].forward.__func__.__name__ == "_checkpointed_forward"
    int8 = bench.build(SMALL, "lora+ckpt+int8")
    assert is_quantized(int8.get_parameter("blocks.0.attn.qkv.base.weight"))
    peft_int8 = bench.build(SMALL, "peft+ckpt+int8")
    assert is_quantized(peft_int8.get_parameter("base_model.model.blocks.0.mlp.fc1.weight"))
    assert not is_quantized(peft_int8.get_parameter("base_model.model.head.weight"))
    peft = bench.build(SMALL, "peft+ckpt")
    assert peft.base_model.model.grad_checkpointing
    assert sum(p.numel() for p in peft.parameters() if p.requires_grad) > sum(
        p.numel() for p in lora.parameters() if p.requires_grad)


def test_planned_skips_name_their_reason_and_the_table_shows_them():
    args = argparse.Namespace(device="cpu", batch=8, limit_gib=16.0)
    assert bench.run_config("vit-g", "full", args) == {"skipped": "estimated 22.8 GiB > 16 GiB"}
    assert bench.estimate_gib("vit_huge_patch14_224", "full", 8) > bench.estimate_gib(
        "vit_huge_patch14_224", "lora+ckpt+bf16", 8) * 3
    small = argparse.Namespace(device="cpu", batch=8, limit_gib=1.0)
    assert bench.run_config("vit-b", "full", small)["skipped"].startswith("estimated ")
    rows = {("vit-b", "full"): {"peak_gib": 2.0, "increment_gib": 1.0, "step_s": 3.0},
            ("vit-b", "lora"): {"peak_gib": 0.5, "increment_gib": 0.2, "step_s": 1.0},
            ("vit-g", "full"): {"skipped": "estimated 22.8 GiB > 16 GiB"}}
    page = bench.render(["vit-b", "vit-g"], ["full", "lora"], rows, {}, argparse.Namespace(
        device="cpu", threads=2, batch=8, steps=2, limit_gib=16.0), ["python benchmarks/memory.py"])
    assert "| lora | 0.50 | 0.20 | 1.0 | 0.25x | not run |" in page
    assert "| full | 2.00 | 1.00 | 3.0 | 1.00x | skipped: estimated 22.8 GiB > 16 GiB |" in page
    # a configuration skipped in every run shows the latest reason (an older one may be obsolete)
    assert bench.summary([{"skipped": "GPU only (no CUDA here)"}, {"skipped": "estimated 22.8 GiB > 16 GiB"}]) == {
        "skipped": "estimated 22.8 GiB > 16 GiB"}


def test_combine_makes_one_page_of_several_runs_and_keeps_the_notes(tmp_path):
    runs = {"a": [["vit-b", "lora", {"peak_gib": 1.0, "increment_gib": 0.5, "step_s": 2.0, "load": 1.0}]],
            "b": [["vit-b", "lora", {"peak_gib": 3.0, "increment_gib": 0.7, "step_s": 4.0, "load": 2.0}],
                  ["vit-b", "full", {"peak_gib": 4.0, "increment_gib": 2.0, "step_s": 5.0, "load": 2.0}]]}
    for name, rows in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"commands": [f"run {name}"], "runs": rows}))
    (tmp_path / "notes.md").write_text("**Spread between rounds**: kept.\n")
    out = tmp_path / "page.md"

    bench.main(["--combine", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--notes", str(tmp_path / "notes.md"),
                "--out", str(out), "--device", "cpu"])

    page = out.read_text()
    assert "| lora | 2.00 | 0.60 | 3.0 | 0.50x |" in page  # medians over the runs, ratio to full
    assert page.endswith("**Spread between rounds**: kept.\n")
    assert "`run a`, `run b`, `python benchmarks/memory.py --combine" in page and "--notes" in page
