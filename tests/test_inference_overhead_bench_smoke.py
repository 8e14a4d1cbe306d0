"""Smoke test of benchmarks/inference_overhead.py: a tiny run writes one row with every ratio
measured and the medpeft output within 1e-5 of the unmerged and merged ones (not the timings)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_presets_bench_smoke import table_rows

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "inference_overhead.py"
COLUMNS = [
    "model",
    "batch",
    "base (CPU ms)",
    "medpeft",
    "cache off",
    "merged",
    "2 tasks alternating",
    "peft unmerged",
    "rounds",
    "load avg",
]


@pytest.mark.parametrize(("method", "title"), [("lora", "LoRA"), ("dora", "DoRA")])
def test_tiny_run_writes_a_measured_row_and_the_exactness_check(tmp_path, method, title):
    out = tmp_path / "overhead.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    args = [
        "--models",
        "vit_tiny_patch16_224",
        "--batches",
        "2",
        "--img-size",
        "32",
        "--seconds",
        "0",
        "--min-rounds",
        "2",
        "--output",
        str(out),
        "--method",
        method,
    ]
    subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, check=True, capture_output=True, text=True, timeout=300
    )
    text = out.read_text()
    assert text.startswith(f"# Inference overhead of one {title} adapter")
    header, _separator, *rows = table_rows(text)
    assert header == COLUMNS and len(rows) == 1
    row = dict(zip(COLUMNS, rows[0], strict=True))
    assert row["model"] == "vit_tiny_patch16_224" and row["batch"] == "2" and row["rounds"] == "2"
    assert all(float(row[column]) > 0 for column in COLUMNS[2:8])
    difference = re.search(r"logit difference (\S+)", text).group(1)
    assert float(difference) <= 1e-5
