"""The torchvision shim: ``import medpeft`` imports no torch, yet makes timm/torchvision importable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import medpeft

SOURCE = str(Path(medpeft.__file__).parents[1])


def run_python(code: str) -> str:
    """stdout of ``code`` in a fresh interpreter that imports this checkout's medpeft."""
    env = {**os.environ, "PYTHONPATH": SOURCE}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout


def test_import_medpeft_imports_no_torch_and_timm_then_imports():
    out = run_python(
        "import sys, medpeft; print('torch' in sys.modules)\n"
        "import timm, torchvision.transforms; print(timm.create_model('resnet18').__class__.__name__)"
    )
    assert out.split() == ["False", "ResNet"]


def test_help_and_configs_import_no_torch():
    code = ("import sys, contextlib, io; from medpeft.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "    main([{}])\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'timm') if m in sys.modules))")
    assert run_python(code.format("'--help'")).split() == ["[]"]
    assert run_python(code.format("'configs'")).split() == ["[]"]
