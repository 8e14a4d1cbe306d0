"""Report evaluation over a grid of missing-modality test settings.

``results`` maps ``(kind, eta)`` (a missing type such as ``"text"``,
``"image"`` or ``"mixed"``, and a missing rate) to a dict of metric name ->
value, e.g. ``{("text", 0.7): {"f1_macro": 0.61, "f1_micro": 0.72}}``.
Outputs: a markdown table, a kind x eta heatmap and a metric-vs-eta line plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from medpeft.atomic import atomic_write
from medpeft.errors import ConfigError

Results = Mapping[tuple[str, float], Mapping[str, float]]


def _axes(results: Results) -> tuple[list[str], list[float]]:
    """Kinds in first-seen order and sorted etas."""
    kinds = list(dict.fromkeys(kind for kind, _ in results))
    etas = sorted({float(eta) for _, eta in results})
    return kinds, etas


def _grid(results: Results, metric: str) -> tuple[list[str], list[float], np.ndarray]:
    """Metric values as a kinds x etas array (NaN where a setting was not run)."""
    kinds, etas = _axes(results)
    if not any(metric in m for m in results.values()):
        raise ConfigError(f"metric {metric!r} is in no result; have {_metric_names(results)}")
    grid = np.full((len(kinds), len(etas)), np.nan)
    for (kind, eta), metrics in results.items():
        grid[kinds.index(kind), etas.index(float(eta))] = metrics.get(metric, np.nan)
    return kinds, etas, grid


def _metric_names(results: Results) -> list[str]:
    return list(dict.fromkeys(name for metrics in results.values() for name in metrics))


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def missing_grid_table(results: Results, metric: str | None = None, digits: int = 4) -> str:
    """Markdown table of a test-setting grid.

    Args:
        results: ``(kind, eta)`` -> metrics.
        metric: if given, a pivot (one row per kind, one column per eta) of
            this metric; otherwise one row per setting with every metric.
        digits: decimals shown.
    """
    if metric is not None:
        kinds, etas, grid = _grid(results, metric)
        header = [f"{metric} \\ eta", *(f"{eta:g}" for eta in etas)]
        rows = [[kind, *(_cell(v, digits) for v in grid[i])] for i, kind in enumerate(kinds)]
        return _markdown(header, rows)
    kinds, etas = _axes(results)
    names = _metric_names(results)
    lookup = {(kind, float(eta)): metrics for (kind, eta), metrics in results.items()}
    rows = [
        [kind, f"{eta:g}", *(_cell(lookup[kind, eta].get(n), digits) for n in names)]
        for kind in kinds
        for eta in etas
        if (kind, eta) in lookup
    ]
    return _markdown(["kind", "eta", *names], rows)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    finally:
        plt.close(fig)


def plot_missing_heatmap(results: Results, path: str | Path, metric: str = "f1_macro") -> Path:
    """Heatmap of ``metric`` over missing type (rows) x missing rate (columns); writes a PNG."""
    kinds, etas, grid = _grid(results, metric)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(etas), 1.0 + 0.6 * len(kinds)))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(etas)), [f"{eta:g}" for eta in etas])
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("missing rate eta")
    ax.set_ylabel("missing type")
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    fig.tight_layout()
    return _save(fig, path)


def plot_missing_curves(results: Results, path: str | Path, metric: str = "f1_macro") -> Path:
    """Line plot of ``metric`` against the missing rate, one line per missing type; writes a PNG."""
    kinds, etas, grid = _grid(results, metric)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, kind in enumerate(kinds):
        ax.plot(etas, grid[i], marker="o", label=kind)
    ax.set_xlabel("missing rate eta")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(title="missing type")
    fig.tight_layout()
    return _save(fig, path)
