"""Reports of finished runs: markdown tables, run summaries and missing-modality grids.

`markdown_table` is the one table writer. Run summaries (`summary_row`,
`print_run_report`) describe single-modality training runs. Missing-grid
reports take ``results`` mapping ``(kind, eta)`` (a missing type such as
``"text"``, ``"image"`` or ``"mixed"``, and a missing rate) to a dict of metric
name -> value, e.g. ``{("text", 0.7): {"f1_macro": 0.61, "f1_micro": 0.72}}``,
and give a markdown table, a kind x eta heatmap and a metric-vs-eta line plot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medpeft.atomic import atomic_write
from medpeft.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from medpeft.runs.train import RunReport

Results = Mapping[tuple[str, float], Mapping[str, float]]
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "map")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], digits: int = 4
) -> str:
    """A GitHub-markdown table: floats with ``digits`` decimals, ``-`` for None or NaN."""

    def cell(value: object) -> str:
        if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, (float, np.floating)) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_header(metrics: Sequence[str] = SUMMARY_METRICS) -> list[str]:
    """Header of the run summary table (see `summary_row`)."""
    return ["method", "trainable", "% of model", "adapter KB", *metrics]


def summary_row(
    name: str, report: RunReport, metrics: Sequence[str] = SUMMARY_METRICS
) -> list[object]:
    """One table row: method, trainable parameters and %, adapter size, test metrics."""
    scores = report.test_metrics or report.val_metrics
    return [
        name,
        f"{report.params.trainable:,}",
        f"{report.params.percent:.2f}%",
        f"{report.adapter_bytes / 1024:.1f}",
        *(scores.get(m) for m in metrics),
    ]


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


def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure outside pyplot: no global backend or figure state is touched."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def plot_missing_heatmap(results: Results, path: str | Path, metric: str = "f1_macro") -> Path:
    """Heatmap of ``metric`` over missing type (rows) x missing rate (columns); writes a PNG."""
    kinds, etas, grid = _grid(results, metric)
    fig = _figure(1.0 + 0.8 * len(etas), 1.0 + 0.6 * len(kinds))
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
    fig.tight_layout()
    return _save(fig, path)


def plot_missing_curves(results: Results, path: str | Path, metric: str = "f1_macro") -> Path:
    """Line plot of ``metric`` against the missing rate, one line per missing type; writes a PNG."""
    kinds, etas, grid = _grid(results, metric)
    fig = _figure(5, 3.5)
    ax = fig.subplots()
    for i, kind in enumerate(kinds):
        ax.plot(etas, grid[i], marker="o", label=kind)
    ax.set_xlabel("missing rate eta")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(title="missing type")
    fig.tight_layout()
    return _save(fig, path)
