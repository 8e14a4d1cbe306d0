"""Evaluate a model on a split of a run's data, and on the missing-modality grid.

``medpeft eval RUN`` re-evaluates a finished run (any method, any number of
modalities, run folders of medpeft 0.1 included): the split under its missing
setting, then, when the data has several modalities, every grid setting
(``grid.md``, ``grid.json``, heatmap and curves PNGs). The split's per-sample scores go
to ``predictions_{split}.csv`` (read by ``medpeft report``); ``{split}_metrics.json``
names the positive class of a two-class task (``positive_class``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from medpeft.adapters_io.folder import load_adapter
from medpeft.atomic import atomic_write_text
from medpeft.config import RunConfig, load_config
from medpeft.data.missing import MissingTable
from medpeft.errors import ConfigError
from medpeft.metrics import format_metrics_table
from medpeft.reports import Results, missing_grid_table, plot_missing_curves, plot_missing_heatmap
from medpeft.reports.scores import SplitScores
from medpeft.runs.data import (
    RunData,
    grid_tables,
    load_source,
    positive_index,
    run_data,
    run_positive_class,
    saved_or_new_tables,
)
from medpeft.runs.layout import RunLayout
from medpeft.train import EvalResult, evaluate
from medpeft.train.settings import autocast_dtype, resolve_device

DEFAULT_METRIC = "f1_macro"


@dataclass
class Evaluation:
    """Metrics of one split under its missing setting, and under every grid setting."""

    split: str
    metrics: dict[str, float]
    grid: dict[tuple[str, float], dict[str, float]] = field(default_factory=dict)
    metric: str = DEFAULT_METRIC


def evaluate_split(
    model: nn.Module,
    data: RunData,
    config: RunConfig,
    split: str,
    table: MissingTable | None,
    layout: RunLayout,
    progress: bool = False,
) -> Evaluation:
    """Metrics of ``split`` (and of every grid setting), written into the run folder."""
    task, labels = data.source.task, data.source.labels
    dtype = autocast_dtype(config.train)
    positive = run_positive_class(config, data.source)

    def run(split_table: MissingTable | None) -> EvalResult:
        loader = data.loader(split, split_table)
        return evaluate(model, loader, task, labels, progress, dtype, positive_index(data.source, positive))

    result = run(table)
    metrics = result.metrics
    named = {"positive_class": positive} if positive is not None else {}
    atomic_write_text(layout.split_metrics(split), json.dumps({**named, **metrics}, indent=2))
    SplitScores(labels, task, result.scores, result.targets).write_csv(layout.predictions(split))
    grid = {
        key: overall(run(t).metrics) for key, t in grid_tables(data.source, config.missing, split).items()
    }
    metric = config.train.monitor if config.train.monitor in metrics else DEFAULT_METRIC
    if grid:
        write_grid_report(grid, layout.grid_stem(split), metric)
    return Evaluation(split, metrics, grid, metric)


def evaluate_run(
    run_dir: str | Path,
    overrides: Sequence[str] = (),
    adapter: str | Path | None = None,
    split: str = "test",
    weights: str | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate a finished run's adapter on ``split`` (and the grid); write the reports.

    Args:
        run_dir: Run folder (``config.yaml``, ``adapter/``).
        overrides: ``key=value`` changes to the run's config (``data.root``,
            ``missing.grid.etas``...).
        adapter: Adapter folder (default ``run_dir/adapter``).
        split: ``train``, ``val`` or ``test``.
        weights: Backbone checkpoint (default: the run's ``model.weights``).
        progress: Show progress bars.
    """
    layout = RunLayout.at(run_dir)
    config = load_config(layout.config, overrides)
    source = load_source(config, layout)
    tables = saved_or_new_tables(source, config.missing, layout)
    if split not in tables:
        raise ConfigError(f"split {split!r} is empty; have {sorted(tables)}")
    weights = weights or config.model.weights
    random = not weights and not config.model.pretrained
    torch.manual_seed(config.train.seed)  # a 0.1 adapter's random backbone, rebuilt as in training
    model, adapter_config = load_adapter(
        adapter or layout.adapter, weights=weights, pretrained=config.model.pretrained and not weights,
        allow_random_backbone=random,
    )
    if adapter_config.labels != source.labels:
        raise ConfigError(
            f"the data's labels {source.labels} differ from the adapter's {adapter_config.labels}"
        )
    model.to(resolve_device(config.train.device))
    data = run_data(config, source, model)
    return evaluate_split(model, data, config, split, tables[split], layout, progress)


def write_grid_report(results: Results, stem: Path, metric: str) -> None:
    """``{stem}.md`` (pivot of ``metric`` + every metric), ``.json``, heatmap and curves PNGs."""
    text = (
        f"# Missing-modality grid ({metric})\n\n{missing_grid_table(results, metric)}\n"
        f"## All metrics\n\n{missing_grid_table(results)}"
    )
    atomic_write_text(stem.with_suffix(".md"), text)
    rows = [{"kind": kind, "eta": eta, **values} for (kind, eta), values in results.items()]
    atomic_write_text(stem.with_suffix(".json"), json.dumps(rows, indent=2))
    plot_missing_heatmap(results, stem.parent / f"{stem.name}_heatmap.png", metric)
    plot_missing_curves(results, stem.parent / f"{stem.name}_curves.png", metric)


def format_evaluation(evaluation: Evaluation) -> str:
    """An evaluation as console text: the split's metrics, then the grid pivot."""
    text = f"{evaluation.split} split:\n{format_metrics_table(evaluation.metrics)}"
    if evaluation.grid:
        text += f"\n\n{missing_grid_table(evaluation.grid, evaluation.metric)}"
    return text


def overall(metrics: Mapping[str, float]) -> dict[str, float]:
    """Summary metrics only (no per-class ``metric/class`` keys)."""
    return {k: v for k, v in metrics.items() if "/" not in k}
