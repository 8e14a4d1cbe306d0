"""Console summaries of finished runs."""

from __future__ import annotations

from collections.abc import Sequence

from medpeft.runner import RunReport

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "map")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (floats with 4 decimals)."""

    def cell(value: object) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_row(name: str, report: RunReport, metrics: Sequence[str] = SUMMARY_METRICS) -> list[object]:
    """One table row: method, trainable parameters and %, adapter size, test metrics."""
    scores = report.test_metrics or report.val_metrics
    return [
        name,
        f"{report.params.trainable:,}",
        f"{report.params.percent:.2f}%",
        f"{report.adapter_bytes / 1024:.1f}",
        *(scores.get(m, float("nan")) for m in metrics),
    ]


def summary_header(metrics: Sequence[str] = SUMMARY_METRICS) -> list[str]:
    return ["method", "trainable", "% of model", "adapter KB", *metrics]


def print_run_report(report: RunReport) -> None:
    """Print where a run wrote its outputs and how it scored."""
    print(markdown_table(summary_header(), [summary_row(report.run_dir.name, report)]))
    print(f"best epoch: {report.best_epoch}; adapter: {report.adapter_dir}; "
          f"log: {report.run_dir / 'metrics.csv'}")
