"""Smoke test of benchmarks/presets.py: the quick run measures its one tiny ViT and writes the
table with every column filled (numbers, not how large they are)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "presets.py"
COLUMNS = ["preset", "input (px)", "params (M)", "estimate (GiB)", "build (s)", "step (s)",
           "peak RSS (MiB)", "step increment (MiB)", "load avg"]


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of every table line."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("options", [[], ["--low-memory"]])
def test_quick_run_writes_a_measured_row_under_the_documented_columns(tmp_path, options):
    out = tmp_path / "presets.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--out", str(out), *options],
                   env=env, check=True, capture_output=True, text=True, timeout=300)
    page = out.read_text()
    assert ("activation checkpointing on" in page) == bool(options)
    header, _separator, *rows = table_rows(page)
    assert header == COLUMNS
    assert len(rows) == 1
    row = dict(zip(COLUMNS, rows[0], strict=True))
    assert row["preset"].startswith("`clip-b16` (tiny:") and row["input (px)"] == "32"
    for column in ("build (s)", "step (s)", "peak RSS (MiB)", "step increment (MiB)"):
        assert float(row[column].replace(",", "")) > 0, (column, row)
    assert float(row["params (M)"]) > 0
