"""PNG plots of a run's report page: training curves, ROC/PR curves, confusion, calibration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

from medpeft.reports.figures import new_figure, save_png
from medpeft.reports.scores import SplitScores
from medpeft.reports.stats import Calibration

MAX_LEGEND = 12


def plot_training_curves(
    history: Sequence[Mapping[str, float]], monitor: str, path: str | Path, best_epoch: int | None = None
) -> Path:
    """Train/val loss and the monitored validation metric per epoch (best epoch marked)."""
    epochs = [row["epoch"] for row in history]
    fig = new_figure(9, 3.4)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key in ("train_loss", "val_loss"):
        if any(key in row for row in history):
            loss_ax.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=key)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    loss_ax.legend()
    metric_ax.plot(epochs, [row.get(monitor, np.nan) for row in history], marker="o", color="C2")
    metric_ax.set(xlabel="epoch", ylabel=monitor, title=f"validation {monitor}")
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label="best epoch")
    metric_ax.legend()
    return save_png(fig, path)


def plot_roc_curves(scores: SplitScores, path: str | Path) -> Path:
    """One-vs-rest ROC curve per class, AUROC in the legend."""
    fig = new_figure(5.2, 4.6)
    ax = fig.subplots()
    for c, label in _defined(scores, both=True):
        fpr, tpr, _ = roc_curve(scores.truth[:, c], scores.scores[:, c])
        ax.plot(fpr, tpr, color=_colour(c), label=f"{label} ({auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity", title="ROC (AUROC)")
    _finish(ax, len(scores.labels))
    return save_png(fig, path)


def plot_pr_curves(scores: SplitScores, path: str | Path) -> Path:
    """Precision-recall curve per class, average precision in the legend, prevalence dotted."""
    fig = new_figure(5.2, 4.6)
    ax = fig.subplots()
    for c, label in _defined(scores, both=False):
        truth, score = scores.truth[:, c], scores.scores[:, c]
        precision, recall, _ = precision_recall_curve(truth, score)
        ap = average_precision_score(truth, score)
        ax.step(recall, precision, where="post", color=_colour(c), label=f"{label} ({ap:.3f})")
        ax.axhline(truth.mean(), color=_colour(c), linestyle=":", linewidth=0.8)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="precision-recall (AP)")
    _finish(ax, len(scores.labels))
    return save_png(fig, path)


def _defined(scores: SplitScores, both: bool) -> list[tuple[int, str]]:
    """Classes with positives (and negatives, if ``both``) in the targets."""
    positives = scores.truth.sum(0)
    ok = (positives > 0) & ((positives < len(scores.truth)) if both else True)
    return [(c, label) for c, label in enumerate(scores.labels) if ok[c]]


def _colour(index: int) -> tuple:
    from matplotlib import colormaps

    return colormaps["tab10" if index < 10 else "tab20"](index % 20)


def _finish(ax, num_classes: int) -> None:
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7 if num_classes > 6 else 8, loc="best", ncol=1 + num_classes // MAX_LEGEND)


def plot_confusion(scores: SplitScores, decisions: np.ndarray, path: str | Path) -> Path:
    """Multiclass: true x predicted counts (colour: share of the true class). Multilabel:
    a 2x2 table (present/absent x called/not) per label."""
    if scores.task == "multiclass":
        return _confusion_matrix(scores, decisions.argmax(1), path)
    return _label_tables(scores, decisions, path)


def _confusion_matrix(scores: SplitScores, predicted: np.ndarray, path: str | Path) -> Path:
    labels, size = scores.labels, len(scores.labels)
    counts = np.zeros((size, size), dtype=int)
    np.add.at(counts, (scores.targets, predicted), 1)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = 2.2 + 0.55 * size
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(size), labels, rotation=45, ha="right")
    ax.set_yticks(range(size), labels)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (test)")
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=10 if size <= 6 else 7,
                color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class", fraction=0.046)
    return save_png(fig, path)


def _label_tables(scores: SplitScores, decisions: np.ndarray, path: str | Path) -> Path:
    labels = scores.labels
    columns = min(3, len(labels))
    rows = -(-len(labels) // columns)
    fig = new_figure(1.6 + 1.9 * columns, 0.4 + 1.9 * rows)
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, c in zip(axes, range(len(labels))):
        truth, called = scores.truth[:, c], decisions[:, c]
        table = np.array([[np.sum(truth & called), np.sum(truth & (1 - called))],
                          [np.sum((1 - truth) & called), np.sum((1 - truth) & (1 - called))]])
        share = table / max(table.sum(), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(table):
            ax.text(j, i, str(count), ha="center", va="center", fontsize=11,
                    color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks([0, 1], ["called", "not"])
        ax.set_yticks([0, 1], ["present", "absent"])
        ax.set_title(labels[c], fontsize=10)
    for ax in axes[len(labels):]:
        ax.axis("off")
    return save_png(fig, path)


def plot_calibration(cal: Calibration, path: str | Path) -> Path:
    """Reliability diagram (observed frequency vs mean confidence per bin) over a count histogram."""
    fig = new_figure(5.2, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bins = len(cal.counts)
    centres = (np.arange(bins) + 0.5) / bins
    top.bar(centres, np.nan_to_num(cal.frequency), width=1 / bins, edgecolor="black",
            color="C0", alpha=0.7, label="observed")
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    defined = cal.counts > 0
    top.plot(cal.confidence[defined], cal.frequency[defined], marker="o", color="C3", label="bin means")
    top.set(ylabel="observed frequency", title=f"calibration ({cal.what}); ECE {cal.ece:.3f}")
    top.set_ylim(0, 1)
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar(centres, cal.counts, width=1 / bins, color="grey", edgecolor="black")
    bottom.set(xlabel=cal.what, ylabel="count")
    bottom.set_xlim(0, 1)
    return save_png(fig, path)
