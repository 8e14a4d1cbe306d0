"""The README's two commands: CI runs the test command as written; the demo installs the extras."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Two commands") : text.index("## Quickstart")]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_ci_runs_the_readme_test_command():
    _, tests = _commands()
    assert tests in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests.endswith("python -m pytest") and "torch==2.13.0" in tests


def test_the_demo_command_installs_the_medical_and_multimodal_extras():
    demo, _ = _commands()
    assert '".[medical,multimodal]"' in demo and demo.endswith("medpeft demo")
