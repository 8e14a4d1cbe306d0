"""Family registry: every family registered on import, without importing transformers or open_clip."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from torch import nn

from medpeft.backbones.base import describe
from medpeft.errors import ConfigError

PROBE = (
    "import sys, medpeft.backbones\n"
    "from medpeft.backbones.base import families\n"
    "print(sorted({f.family for f in families()}))\n"
    "print([m for m in ('transformers', 'open_clip') if m in sys.modules])\n"
)


def test_families_register_without_importing_their_libraries():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    registered, imported = done.stdout.splitlines()
    assert {"open_clip", "transformers"} <= set(ast.literal_eval(registered))
    assert imported == "[]"


def test_a_module_no_family_reads_is_one_line_listing_each_family_once():
    with pytest.raises(ConfigError) as error:
        describe(nn.Linear(2, 2))
    message = str(error.value)
    assert message.startswith("medpeft cannot adapt a torch.nn.modules.linear.Linear: not a backbone family")
    assert message.count("open_clip") == 1 and "transformers" in message
