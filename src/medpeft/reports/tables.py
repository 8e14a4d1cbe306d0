"""Markdown tables: the one table writer and the run summary rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from medpeft.methods.layers import ParameterCount
from medpeft.units import format_size


class RunSummary(Protocol):
    """What `summary_row` reads of a finished run (`medpeft.runs.train.RunReport` has it)."""

    val_metrics: dict[str, float]
    params: ParameterCount
    adapter_bytes: int

    @property
    def test_metrics(self) -> dict[str, float]: ...


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
    return ["method", "trainable", "% of model", "adapter KiB", *metrics]


def summary_row(
    name: str, report: RunSummary, metrics: Sequence[str] = SUMMARY_METRICS
) -> list[object]:
    """One table row: method, trainable parameters and %, adapter size, test metrics."""
    scores = report.test_metrics or report.val_metrics
    return [
        name,
        f"{report.params.trainable:,}",
        f"{report.params.percent:.2f}%",
        format_size(report.adapter_bytes, suffix=False),
        *(scores.get(m) for m in metrics),
    ]
