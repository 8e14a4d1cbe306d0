"""Smoke test of benchmarks/serve_precision.py: every recipe is timed in a child and compared with float32."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_recipe_gets_a_row_with_its_agreement(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # it imports benchmarks/serve.py as `serve` ...
    monkeypatch.delitem(sys.modules, "serve", raising=False)  # ... not tests/serve
    bench = runpy.run_path(str(BENCHMARKS / "serve_precision.py"))
    out = tmp_path / "precision.md"
    bench["main"](["--img-size", "32", "--seconds", "0.1", "--rounds", "1", "--images", "16", "--threads", "1",
                   "--output", str(out)])
    rows = re.findall(r"^\| 32 \| ([\w+-]+) \| (\d+) \| .* \| ([\d.]+) \| ([\d.e+-]+) \| ([\d.]+)% \|$",
                      out.read_text(), re.M)
    assert [row[0] for row in rows] == ["float32", "bfloat16-layers", "bfloat16+autocast", "int8+autocast"]
    assert all(int(ms) > 0 for _, ms, _, _, _ in rows)
    assert rows[0][3:] == ("0.0e+00", "100.0")
    for _, _, _, difference, top1 in rows[1:]:  # bf16, int8: close to float32, not equal
        assert 0 < float(difference) < 0.05 and float(top1) >= 50
    mib = {row[0]: float(row[2]) for row in rows}
    assert mib["int8+autocast"] < mib["bfloat16+autocast"] < mib["float32"]
