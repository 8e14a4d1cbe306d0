"""``medpeft report RUN_DIR``: an HTML page of a finished run, with its PNG plots beside it.

The page (``index.html``, self-contained: inline CSS, plots embedded) shows the run's
facts, headline test metrics with seeded bootstrap 95% intervals, the parameter and
file size summary, training curves, ROC and precision-recall curves per class, the
confusion matrix, a calibration curve with its ECE, per-class sensitivity and
specificity at an operating point, thumbnails of the worst misclassified test samples
(`medpeft.reports.samples`) and, for several modalities, the missing-modality grid. A
two-class run names its positive class wherever sensitivity, specificity, PPV, ROC or
thresholds appear. ``summary.json`` holds the numbers. Test scores come from the run's
``predictions_test.csv``; a run without it (trained before medpeft saved it) is
evaluated again with its saved adapter first by the ``evaluate`` the caller passes
(``medpeft report`` passes `medpeft.runs.evaluate.evaluate_run`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medpeft.adapters_io.config import AdapterConfig
from medpeft.adapters_io.folder import read_config
from medpeft.atomic import atomic_write_text
from medpeft.data.csvfile import plain_cell
from medpeft.errors import ConfigError
from medpeft.reports import html
from medpeft.reports.grid import plot_missing_heatmap
from medpeft.reports.plots import (
    plot_calibration,
    plot_confusion,
    plot_pr_curves,
    plot_roc_curves,
    plot_training_curves,
)
from medpeft.reports.samples import misclassified_section
from medpeft.reports.scores import SplitScores
from medpeft.reports.stats import (
    Interval,
    OperatingPoint,
    bootstrap,
    calibration,
    class_rates,
    headline_metrics,
    operating_point,
)
from medpeft.run_layout import ADAPTER_DIR, RunLayout
from medpeft.train.files import METRICS_CSV
from medpeft.units import format_size

PAGE = "index.html"
SUMMARY = "summary.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SPLIT = "test"
Evaluate = Callable[[Path], object]
POSITIVE_METRICS = ("auroc", "sensitivity", "specificity")  # a two-class run's: of its positive class


@dataclass
class RunFacts:
    """What the page shows of a run folder."""

    name: str
    adapter: AdapterConfig
    report: dict
    history: list[dict[str, float]]
    scores: SplitScores
    config_text: str
    weights_bytes: int

    @property
    def monitor(self) -> str:
        return self.report["test"].get("metric", "f1_macro")

    @property
    def positive_class(self) -> str | None:
        """A two-class run's positive class: as recorded, else (runs before medpeft recorded
        it) the second class, which their metrics used."""
        labels = self.scores.labels
        if self.scores.task != "multiclass" or len(labels) != 2:
            return None
        return self.adapter.positive_class or self.report.get("positive_class") or labels[1]


def read_run(run_dir: str | Path, evaluate: Evaluate | None = None) -> RunFacts:
    """Read a finished run folder; ``evaluate(run_dir)`` writes its test scores when none are
    saved (a run trained before they were; without it such a run is a ConfigError)."""
    layout = RunLayout.at(run_dir)
    if not layout.report.is_file():
        raise ConfigError(
            f"{layout.root}: no {layout.report.name}; expected the folder of a finished "
            "`medpeft train` run"
        )
    report = json.loads(layout.report.read_text(encoding="utf-8"))
    if not report["test"]["metrics"]:
        raise ConfigError(f"{layout.root}: the run has no test split to report on")
    adapter = read_config(layout.adapter)
    scores_path = layout.predictions(SPLIT)
    if not scores_path.is_file():
        if evaluate is None:
            raise ConfigError(
                f"{layout.root}: no {scores_path.name}; evaluate the run first (medpeft eval {layout.root})"
            )
        evaluate(layout.root)
    weights = layout.adapter / WEIGHTS_FILE
    return RunFacts(
        name=layout.root.resolve().name,
        adapter=adapter,
        report=report,
        history=read_history(layout.root / METRICS_CSV),
        scores=SplitScores.read_csv(scores_path, adapter.task),
        config_text=layout.config.read_text(encoding="utf-8") if layout.config.is_file() else "",
        weights_bytes=weights.stat().st_size if weights.is_file() else 0,
    )


def read_history(path: Path) -> list[dict[str, float]]:
    """The numeric cells of each ``metrics.csv`` row (empty if the file is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [{plain_cell(k): float(v) for k, v in row.items() if _is_number(v)} for row in rows]


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


@dataclass
class PageResult:
    """The written page, and the numbers it shows."""

    page: Path
    headline: dict[str, Interval]
    operating_point: str


def write_report_page(
    run_dir: str | Path,
    out: str | Path | None = None,
    threshold: str | float | None = None,
    resamples: int = 1000,
    seed: int = 0,
    evaluate: Evaluate | None = None,
) -> PageResult:
    """Write ``index.html``, the PNGs and ``summary.json`` of a run; default folder ``RUN/report``.

    Args:
        run_dir: Folder of a finished training run.
        out: Output folder.
        threshold: Operating point: ``argmax``, ``youden`` or a probability (default:
            argmax for multiclass, 0.5 for multilabel).
        resamples: Bootstrap resamples of the test set.
        seed: Bootstrap seed.
        evaluate: Writes the test scores of a run that saved none (see `read_run`).
    """
    facts = read_run(run_dir, evaluate)
    folder = Path(out) if out is not None else RunLayout.at(run_dir).page
    folder.mkdir(parents=True, exist_ok=True)
    scores = facts.scores
    point = operating_point(scores, threshold)
    positive = facts.positive_class
    index = scores.labels.index(positive) if positive is not None else 1
    headline = bootstrap(headline_metrics(scores, point, index), len(scores.scores), resamples, seed)
    rates = class_rates(scores, point)
    cal = calibration(scores)
    plots = _plots(facts, point, cal, folder)
    body = [
        html.row(
            html.section("Run", _facts_table(facts, point)),
            html.section(
                "Test metrics",
                _headline_table(headline, positive),
                f'<p class="note">95% percentile bootstrap intervals ({resamples} resamples of the '
                f"{len(scores.scores)} test samples, seed {seed}); sensitivity and specificity at "
                f"the operating point ({html.escape(point.name)}){html.escape(_positive_note(positive))}.</p>",
            ),
            html.section("Size", _size_table(facts)),
        ),
        *_figure_sections(plots, cal, positive),
        html.section(
            f"Per class at the operating point ({point.name})",
            *([f'<p class="note">Positive class: {html.escape(positive)}; each row counts its own '
               "class as positive.</p>"] if positive is not None else []),
            _class_table(facts, point, rates),
        ),
    ]
    classes = [index] if positive is not None else range(len(scores.labels))
    mistakes = misclassified_section(scores, point.decisions, list(classes), folder)
    if mistakes is not None:
        body.append(mistakes)
    if "missing" in plots:
        body.append(html.section("Missing-modality grid", html.figure(plots["missing"], _GRID_CAPTION)))
    if facts.config_text:
        body.append(html.section("Config", f"<details><summary>config.yaml</summary><pre>"
                                 f"{html.escape(facts.config_text)}</pre></details>"))
    lead = (f"{facts.adapter.method} on {facts.adapter.backbone}: {scores.task}, "
            f"{len(scores.labels)} classes, {len(scores.scores)} test samples")
    page = atomic_write_text(folder / PAGE, html.page(f"medpeft report: {facts.name}", lead, body))
    _write_summary(folder / SUMMARY, facts, point, headline, rates, cal.ece)
    return PageResult(page, headline, point.name)


_GRID_CAPTION = "Test metric under each missing type (rows) and missing rate (columns)."


def _plots(facts: RunFacts, point: OperatingPoint, cal, folder: Path) -> dict[str, Path]:
    scores, plots = facts.scores, {}
    if facts.history:
        plots["curves"] = plot_training_curves(
            facts.history, facts.monitor, folder / "training_curves.png", facts.report.get("best_epoch")
        )
    plots["roc"] = plot_roc_curves(scores, folder / "roc.png")
    plots["pr"] = plot_pr_curves(scores, folder / "pr.png")
    plots["confusion"] = plot_confusion(scores, point.decisions, folder / "confusion.png")
    plots["calibration"] = plot_calibration(cal, folder / "calibration.png")
    grid = {(row["kind"], row["eta"]): row for row in facts.report["test"].get("grid", [])}
    if grid:
        metric = facts.monitor if any(facts.monitor in r for r in grid.values()) else "f1_macro"
        plots["missing"] = plot_missing_heatmap(
            {key: {k: v for k, v in row.items() if k not in ("kind", "eta")} for key, row in grid.items()},
            folder / "missing_heatmap.png", metric,
        )
    return plots


def _positive_note(positive: str | None) -> str:
    """``"; positive class: X"`` (plain text) for a two-class run, else ``""``."""
    return f"; positive class: {positive}" if positive is not None else ""


def _figure_sections(plots: dict[str, Path], cal, positive: str | None) -> list[str]:
    out = []
    if "curves" in plots:
        out.append(html.section("Training", html.figure(
            plots["curves"], "Loss per epoch and the monitored validation metric; dashed: the best "
            "epoch, whose weights were kept.")))
    out.append(html.section("Ranking", '<div class="figures">', html.figure(
        plots["roc"], f"One-vs-rest ROC curve per class (AUROC in brackets){_positive_note(positive)}."),
        html.figure(
        plots["pr"], "Precision-recall curve per class (average precision in brackets); dotted: "
        "the class's prevalence."), "</div>"))
    out.append(html.section("Errors and calibration", '<div class="figures">', html.figure(
        plots["confusion"], "Counts at the operating point; colour: share of the true class "
        "(multiclass) or of all samples (one table per label, multilabel)."),
        html.figure(plots["calibration"], f"Reliability of the {cal.what} in 10 bins; ECE "
                    f"{cal.ece:.3f} (mean |observed - predicted| weighted by bin size)."), "</div>"))
    return out


def _facts_table(facts: RunFacts, point: OperatingPoint) -> str:
    a, report = facts.adapter, facts.report
    rows = [
        ("run", facts.name),
        ("method", a.method),
        ("backbone", a.backbone if a.kind == "timm" else f"{a.backbone} ({a.kind})"),
        ("modalities", ", ".join(a.modalities)),
        ("task", f"{a.task}, {len(a.labels)} classes"),
        ("test samples", len(facts.scores.scores)),
        ("best epoch", f"{report.get('best_epoch')} of {report.get('epochs', len(facts.history))}"),
        ("monitor", facts.monitor),
        ("operating point", point.name),
    ]
    if facts.positive_class is not None:
        rows.append(("positive class", facts.positive_class))
    return html.table(None, rows, css="facts")


def _headline_table(headline: dict[str, Interval], positive: str | None) -> str:
    def named(metric: str) -> str:  # a two-class run's AUROC, sensitivity, specificity: of `positive`
        return f"{metric} ({positive})" if positive is not None and metric in POSITIVE_METRICS else metric

    rows = [
        (named(name), html.number(i.value), f"{html.number(i.low)} - {html.number(i.high)}")
        for name, i in headline.items()
    ]
    return html.table(["metric", "value", "95% CI"], rows)


def _size_table(facts: RunFacts) -> str:
    params = facts.report["params"]
    trainable, total = params["trainable"], params["total"]
    rows = [
        ("trainable parameters", f"{trainable:,}"),
        ("model parameters", f"{total:,}"),
        ("trainable share", f"{100 * trainable / max(total, 1):.3f}%"),
        ("adapter weights file", format_size(facts.weights_bytes)),
        ("adapter folder", f"{format_size(facts.report['adapter_bytes'])} ({ADAPTER_DIR}/)"),
    ]
    return html.table(None, rows, css="facts")


def _class_table(facts: RunFacts, point: OperatingPoint, rates: dict[str, np.ndarray]) -> str:
    metrics = facts.report["test"]["metrics"]
    rows = []
    for c, label in enumerate(facts.scores.labels):
        rows.append((
            label, int(rates["support"][c]), html.number(point.thresholds[c]),
            *(int(rates[k][c]) for k in ("tp", "fn", "fp", "tn")),
            *(html.number(rates[k][c]) for k in ("sensitivity", "specificity", "ppv", "npv")),
            html.number(metrics.get(f"auroc/{label}")), html.number(metrics.get(f"ap/{label}")),
        ))
    header = ["class", "positives", "threshold", "TP", "FN", "FP", "TN",
              "sensitivity", "specificity", "PPV", "NPV", "AUROC", "AP"]
    return html.table(header, rows)


def _write_summary(path: Path, facts: RunFacts, point: OperatingPoint, headline: dict[str, Interval],
                   rates: dict[str, np.ndarray], ece: float) -> Path:
    per_class = {
        label: {k: _plain(v[c]) for k, v in rates.items()} | {"threshold": _plain(point.thresholds[c])}
        for c, label in enumerate(facts.scores.labels)
    }
    data = {
        "run": facts.name,
        "method": facts.adapter.method,
        "task": facts.scores.task,
        "test_samples": len(facts.scores.scores),
        "operating_point": point.name,
        "positive_class": facts.positive_class,
        "headline": {name: {k: _plain(v) for k, v in asdict(i).items()} for name, i in headline.items()},
        "ece": ece,
        "per_class": per_class,
        "params": facts.report["params"],
        "adapter_weights_bytes": facts.weights_bytes,
    }
    return atomic_write_text(path, json.dumps(data, indent=2))


def _plain(value: float) -> float | None:
    """A JSON number (None for NaN)."""
    value = float(value)
    return None if np.isnan(value) else value
