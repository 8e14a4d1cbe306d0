"""Missing-modality grid reports: markdown tables and PNG plots."""

import pytest

from medpeft.errors import ConfigError
from medpeft.reports import (
    markdown_table,
    missing_grid_table,
    plot_missing_curves,
    plot_missing_heatmap,
)

RESULTS = {
    ("text", 0.1): {"f1_macro": 0.8, "f1_micro": 0.9},
    ("text", 0.7): {"f1_macro": 0.6, "f1_micro": 0.75},
    ("image", 0.7): {"f1_macro": 0.5, "f1_micro": 0.66667},
    ("both", 0.1): {"f1_macro": 0.7},
}


def test_long_table_lists_every_setting_and_metric():
    lines = missing_grid_table(RESULTS, digits=3).splitlines()
    assert lines[0] == "| kind | eta | f1_macro | f1_micro |"
    assert lines[2:] == [
        "| text | 0.1 | 0.800 | 0.900 |",
        "| text | 0.7 | 0.600 | 0.750 |",
        "| image | 0.7 | 0.500 | 0.667 |",
        "| both | 0.1 | 0.700 | - |",
    ]


def test_pivot_table_kind_by_eta():
    lines = missing_grid_table(RESULTS, metric="f1_macro", digits=2).splitlines()
    assert lines[0] == "| f1_macro \\ eta | 0.1 | 0.7 |"
    assert lines[2:] == ["| text | 0.80 | 0.60 |", "| image | - | 0.50 |", "| both | 0.70 | - |"]


def test_plots_write_png(tmp_path):
    for plot in (plot_missing_heatmap, plot_missing_curves):
        path = plot(RESULTS, tmp_path / f"{plot.__name__}.png", metric="f1_micro")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "plot_missing_curves.png",
        "plot_missing_heatmap.png",
    ]
    with pytest.raises(ConfigError, match="auroc"):
        plot_missing_heatmap(RESULTS, tmp_path / "x.png", metric="auroc")


def test_markdown_table_formats_floats_and_marks_gaps():
    table = markdown_table(["method", "auroc", "map"], [["lora", 0.91234, float("nan")], ["x", None, 2]])
    assert table.splitlines() == [
        "| method | auroc | map |",
        "|---|---|---|",
        "| lora | 0.9123 | - |",
        "| x | - | 2 |",
    ]
