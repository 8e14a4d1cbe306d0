"""Reports of runs: markdown tables, missing-modality grids and the HTML report page.

`markdown_table` is the one table writer; `summary_row` describes a training run;
:mod:`medpeft.reports.grid` plots missing-modality grids; :mod:`medpeft.reports.page`
writes a run's report page (``medpeft report``).
"""

from medpeft.reports.grid import (
    Results,
    missing_grid_table,
    plot_missing_curves,
    plot_missing_heatmap,
)
from medpeft.reports.tables import SUMMARY_METRICS, markdown_table, summary_header, summary_row

__all__ = [
    "SUMMARY_METRICS",
    "Results",
    "markdown_table",
    "missing_grid_table",
    "plot_missing_curves",
    "plot_missing_heatmap",
    "summary_header",
    "summary_row",
]
