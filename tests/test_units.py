"""Sizes are written in binary units (KiB, MiB) by one helper."""

from __future__ import annotations

from medpeft.reports import summary_header
from medpeft.units import format_size


def test_sizes_are_1024_based_with_the_unit_named():
    assert format_size(1536) == "1.5 KiB"
    assert format_size(3 * 2**20, "MiB") == "3.0 MiB"
    assert format_size(2**30, "MiB") == "1,024.0 MiB"
    assert format_size(300 * 1024, suffix=False) == "300.0"


def test_summary_table_names_kib():
    assert "adapter KiB" in summary_header()
