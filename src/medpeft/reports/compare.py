"""A page comparing runs side by side, from the ``summary.json`` of their report pages."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from medpeft.atomic import atomic_write_text
from medpeft.reports import html
from medpeft.reports.page import PAGE, SUMMARY
from medpeft.units import format_size

COLUMNS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_micro", "auroc", "sensitivity", "specificity")


def write_comparison_page(pages: Mapping[str, Path], out: str | Path, lead: str = "") -> Path:
    """An HTML page with one row per run: size, headline metrics with 95% CIs, page link.

    Args:
        pages: Run name -> folder of its report page (``index.html`` + ``summary.json``).
        out: HTML file to write (links to the pages are relative to it).
        lead: A sentence under the title.
    """
    out = Path(out)
    summaries = {name: json.loads((Path(folder) / SUMMARY).read_text(encoding="utf-8"))
                 for name, folder in pages.items()}
    metrics = [m for m in COLUMNS if any(m in s["headline"] for s in summaries.values())]
    rows = []
    for name, summary in summaries.items():
        params = summary["params"]
        cells = [_interval(summary["headline"].get(m)) for m in metrics]
        href = os.path.relpath(Path(pages[name]) / PAGE, out.parent)
        rows.append([
            name, f"{params['trainable']:,}", f"{100 * params['trainable'] / max(params['total'], 1):.2f}%",
            format_size(summary['adapter_weights_bytes'], suffix=False), *cells, html.link(href, "report"),
        ])
    header = ["run", "trainable", "% of model", "adapter KiB", *metrics, "page"]
    note = ('<p class="note">Test split; value and 95% bootstrap interval of each metric. '
            "Sensitivity and specificity at each page's operating point.</p>")
    body = [html.section("Runs", html.table(header, rows), note)]
    return atomic_write_text(out, html.page("medpeft: run comparison", lead, body))


def _interval(data: dict | None) -> html.Raw | str:
    if not data:
        return "-"
    low, high = html.number(data["low"], 2), html.number(data["high"], 2)
    return html.Raw(f'{html.number(data["value"])}<br><span class="note">[{low}, {high}]</span>')
