"""Matplotlib figures outside pyplot (Agg canvas, no global state), saved as PNG atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from medpeft.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches; no backend or pyplot state is touched."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (tight layout) atomically; return the path."""
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
