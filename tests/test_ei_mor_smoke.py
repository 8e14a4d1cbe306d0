"""Smoke test of benchmarks/ei_mor.py: every arm runs and the table has its rows, not who wins."""

from __future__ import annotations

import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ei_mor.py"


def test_one_seed_one_epoch_writes_the_table(tmp_path, capsys):
    bench = runpy.run_path(str(SCRIPT))
    bench["main"](["--seeds", "0", "--epochs", "1", "--samples", "120", "--out", str(tmp_path)])
    table = (tmp_path / "ei_mor.md").read_text()
    for row in ("| EI + MoR |", "| late + MoR |", "| EI + LoRA |", "| MoR vs LoRA (EI, equal budget) |"):
        assert row in table
    assert "| EI vs late fusion (MoR) |" in capsys.readouterr().out
