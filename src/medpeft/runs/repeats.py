"""``train.repeats: N``: the same run with N seeds, and the mean ± std of its test metrics.

Repeat ``i`` is a complete run folder ``<run>/rep<i>`` trained with seed
``train.seed + i`` (split, missing tables and backbone stay those of ``train.seed``
when they come from ``missing.seed`` or the data; only training randomness and
seeded splits change with it). Each repeat resumes or is reused like any run, so
rerunning the command finishes what an interruption left. ``summary.json`` and
``summary.md`` hold every repeat's test metrics and their mean and sample standard
deviation (the EI paper reports 3 runs).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from medpeft.atomic import atomic_write_text
from medpeft.config import RunConfig
from medpeft.reports import markdown_table
from medpeft.run_layout import RunLayout
from medpeft.runs.train import RunReport, train_run


@dataclass
class RepeatsReport:
    """Every repeat's report and the mean and std of each test metric."""

    run_dir: Path
    reports: list[RunReport]
    mean: dict[str, float]
    std: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "repeats": [
                {"run_dir": str(r.run_dir), "test_metrics": r.test_metrics, "best_epoch": r.best_epoch}
                for r in self.reports
            ],
            "mean": self.mean,
            "std": self.std,
        }


def repeat_config(config: RunConfig, index: int) -> RunConfig:
    """The config of repeat ``index``: its own folder and seed ``train.seed + index``."""
    layout = RunLayout.at(config.output_dir)
    train = dataclasses.replace(config.train, seed=config.train.seed + index, repeats=1)
    return dataclasses.replace(
        config, name=f"{config.name}-rep{index}", output_dir=str(layout.repeat(index)), train=train
    )


def train_repeats(config: RunConfig, resume: bool = True, progress: bool = True) -> RepeatsReport:
    """Train (or reuse) every repeat, then write and return the summary."""
    reports = [
        train_run(repeat_config(config, i), resume=resume, progress=progress)
        for i in range(config.train.repeats)
    ]
    names = [m for m in reports[0].test_metrics if all(m in r.test_metrics for r in reports)]
    values = {m: [float(r.test_metrics[m]) for r in reports] for m in names}
    mean = {m: statistics.fmean(v) for m, v in values.items()}
    std = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values.items()}
    summary = RepeatsReport(Path(config.output_dir), reports, mean, std)
    layout = RunLayout.at(config.output_dir)
    atomic_write_text(layout.summary("json"), json.dumps(summary.to_dict(), indent=2))
    atomic_write_text(layout.summary("md"), format_repeats(summary) + "\n")
    return summary


def format_repeats(summary: RepeatsReport, metrics: tuple[str, ...] = ("map", "auroc", "f1_macro", "accuracy")) -> str:
    """Markdown: one row per repeat and a ``mean ± std`` row, for the metrics present."""
    shown = [m for m in metrics if m in summary.mean] or list(summary.mean)[:4]
    rows = [[r.run_dir.name, *(r.test_metrics.get(m) for m in shown)] for r in summary.reports]
    rows.append(["mean ± std", *(f"{summary.mean[m]:.4f} ± {summary.std[m]:.4f}" for m in shown)])
    return markdown_table(["repeat", *shown], rows)
