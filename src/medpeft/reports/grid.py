"""Missing-modality grid reports: a markdown table, a kind x eta heatmap and metric curves.

``results`` map ``(kind, eta)`` (a missing type such as ``"text"``, ``"image"`` or
``"mixed"``, and a missing rate) to a dict of metric name -> value, e.g.
``{("text", 0.7): {"f1_macro": 0.61, "f1_micro": 0.72}}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from medpeft.errors import ConfigError
from medpeft.reports.figures import new_figure, save_png
from medpeft.reports.tables import markdown_table

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
        rows = [[kind, *grid[i]] for i, kind in enumerate(kinds)]
        return markdown_table(header, rows, digits) + "\n"
    kinds, etas = _axes(results)
    names = _metric_names(results)
    lookup = {(kind, float(eta)): metrics for (kind, eta), metrics in results.items()}
    rows = [
        [kind, f"{eta:g}", *(lookup[kind, eta].get(n) for n in names)]
        for kind in kinds
        for eta in etas
        if (kind, eta) in lookup
    ]
    return markdown_table(["kind", "eta", *names], rows, digits) + "\n"


def plot_missing_heatmap(results: Results, path: str | Path, metric: str = "f1_macro") -> Path:
    """Heatmap of ``metric`` over missing type (rows) x missing rate (columns); writes a PNG."""
    kinds, etas, grid = _grid(results, metric)
    fig = new_figure(1.0 + 0.8 * len(etas), 1.0 + 0.6 * len(kinds))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(etas)), [f"{eta:g}" for eta in etas])
    ax.set_yticks(range(len(kinds)), kinds)
    ax.set_xlabel("missing rate eta")
    ax.set_ylabel("missing type")
    for (i, j), value in np.ndenumerate(grid):
        if not math.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label=metric)
    return save_png(fig, path)


def plot_missing_curves(results: Results, path: str | Path, metric: str = "f1_macro") -> Path:
    """Line plot of ``metric`` against the missing rate, one line per missing type; writes a PNG."""
    kinds, etas, grid = _grid(results, metric)
    fig = new_figure(5, 3.5)
    ax = fig.subplots()
    for i, kind in enumerate(kinds):
        ax.plot(etas, grid[i], marker="o", label=kind)
    ax.set_xlabel("missing rate eta")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(title="missing type")
    return save_png(fig, path)
