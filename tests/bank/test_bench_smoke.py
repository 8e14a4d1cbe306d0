"""Smoke test of benchmarks/bank.py --quick: every configuration runs and the table has its rows."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bank.py"


def test_quick_benchmark_writes_the_table(tmp_path):
    bench = runpy.run_path(str(SCRIPT))
    out = tmp_path / "bank.md"
    table = bench["main"](["--quick", "--repeats", "1", "--layer-repeats", "1", "--switches", "20", "--output", str(out)])
    assert out.read_text() == table
    for row in ("| bank: route by name |", "| PEFT set_adapter |", "| 1 adapter |", "| 4 adapters |"):
        assert row in table
    rates = re.findall(r"\| \d+ adapters? \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", table)
    assert len(rates) == 3 and all(float(v) > 0 for row in rates for v in row)
    assert "mixed / PEFT mixed at 4 adapters" in table
