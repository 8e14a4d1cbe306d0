"""Sizes in binary units (1 KiB = 1024 bytes, 1 MiB = 1024 KiB), written one way everywhere."""

from __future__ import annotations

UNITS = {"KiB": 2**10, "MiB": 2**20}


def format_size(size: float, unit: str = "KiB", suffix: bool = True) -> str:
    """``size`` bytes in ``unit`` with one decimal and thousands separators, e.g. ``"1,234.5 KiB"``
    (``suffix=False``: the number alone, for a table column that names the unit)."""
    number = f"{size / UNITS[unit]:,.1f}"
    return f"{number} {unit}" if suffix else number
