"""Diagnosis metrics from predicted probabilities, computed with scikit-learn.

``scores`` are probabilities ``[N, C]`` (softmax for ``"multiclass"``, sigmoid
for ``"multilabel"``); ``targets`` are class indices ``[N]`` (multiclass) or
0/1 indicators ``[N, C]`` (multilabel), as numpy arrays or torch tensors.

Keys (all floats):
    multiclass: ``accuracy``, ``balanced_accuracy``, ``f1_macro``, ``auroc``,
    ``map``, ``sensitivity``, ``specificity`` and per class ``auroc/<class>``,
    ``ap/<class>``. With two classes ``auroc``, ``sensitivity`` and
    ``specificity`` are those of the positive class (``positive``, default
    index 1; runs take ``data.positive_class``); otherwise they are macro
    means over one-vs-rest problems.
    multilabel (a label is predicted when its score > ``threshold``):
    ``subset_accuracy`` (all labels of a sample right), ``label_accuracy``
    (mean over all sample-label pairs), ``f1_macro``, ``f1_micro``,
    ``f1_samples``, ``f1_weighted``, ``auroc``, ``map``, ``sensitivity``,
    ``specificity`` (macro over labels) and per label ``auroc/<label>``,
    ``ap/<label>``.

Undefined values: AUROC needs positives and negatives of a class, AP and
sensitivity need positives, specificity needs negatives. A class lacking them
is skipped: its per-class key is left out, the macro mean is taken over the
remaining classes and a ``RuntimeWarning`` names the skipped classes. Only if
no class is defined is the mean NaN (also with a warning). F1 follows
scikit-learn's definitions with ``zero_division=0`` (0 where undefined).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)

from medpeft.tasks import check_task

METRICS = {
    "multiclass": (
        "accuracy", "balanced_accuracy", "f1_macro", "auroc", "map", "sensitivity", "specificity",
    ),
    "multilabel": (
        "subset_accuracy", "label_accuracy", "f1_macro", "f1_micro", "f1_samples", "f1_weighted",
        "auroc", "map", "sensitivity", "specificity",
    ),
}
PER_CLASS = ("auroc", "ap")  # per-class keys "<metric>/<class>"


def compute_metrics(
    task: str,
    scores: Any,
    targets: Any,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
    positive: int = 1,
) -> dict[str, float]:
    """All metrics of ``task`` for probabilities ``scores`` against ``targets``.

    Args:
        task: ``"multiclass"`` or ``"multilabel"``.
        scores: probabilities ``[N, C]``.
        targets: class indices ``[N]`` or 0/1 indicators ``[N, C]``.
        class_names: names used in per-class keys; defaults to ``"0".."C-1"``.
        threshold: multilabel decision threshold on the scores.
        positive: index of the positive class of a two-class task.

    Raises:
        ValueError: on an unknown task or inconsistent shapes.
    """
    scores, targets = _check_arrays(task, _to_numpy(scores), _to_numpy(targets))
    names = _names(class_names, scores.shape[1])
    if task == "multiclass":
        return _multiclass(scores, targets, names, positive)
    return _multilabel(scores, targets, names, threshold)


def _to_numpy(array: Any) -> np.ndarray:
    """A numpy copy of a tensor or array-like."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    return np.asarray(array)


def _check_arrays(
    task: str, scores: np.ndarray, targets: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes; return float scores and integer targets."""
    check_task(task)
    if scores.ndim != 2 or len(scores) == 0:
        raise ValueError(f"scores must be a non-empty [N, C] array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values (did training diverge?)")
    num, num_classes = scores.shape
    if task == "multiclass":
        if targets.shape != (num,):
            raise ValueError(f"multiclass targets must have shape ({num},), got {targets.shape}")
        if num_classes < 2 or targets.min() < 0 or targets.max() >= num_classes:
            raise ValueError(
                f"multiclass targets must be class indices in [0, {num_classes}) with C >= 2, "
                f"got values {targets.min()}..{targets.max()} for C = {num_classes}"
            )
    elif targets.shape != scores.shape:
        raise ValueError(f"multilabel targets must have shape {scores.shape}, got {targets.shape}")
    elif not np.isin(targets, (0, 1)).all():
        bad = np.unique(targets[~np.isin(targets, (0, 1))])[:5]
        raise ValueError(f"multilabel targets must be 0/1 indicators, got values {bad.tolist()}")
    return scores.astype(np.float64), targets.astype(np.int64)


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Class names for per-class keys."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for {num_classes} score columns")
    return [str(name) for name in class_names]


def _multiclass(
    scores: np.ndarray, targets: np.ndarray, names: list[str], positive: int = 1
) -> dict[str, float]:
    """Multiclass metrics; predictions are the argmax of the scores (two classes: ``auroc``,
    ``sensitivity`` and ``specificity`` of class ``positive``)."""
    preds = scores.argmax(axis=1)
    onehot = np.eye(len(names), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # classes predicted but absent from targets
        balanced = balanced_accuracy_score(targets, preds)
    out = {
        "accuracy": float(accuracy_score(targets, preds)),
        "balanced_accuracy": float(balanced),
        "f1_macro": float(f1_score(targets, preds, average="macro", zero_division=0)),
    }
    out.update(_ranking(scores, onehot[targets], names))
    sens, spec = _rates(onehot[preds], onehot[targets])
    if len(names) == 2:
        out["auroc"] = out.get(f"auroc/{names[positive]}", float("nan"))
        out["sensitivity"], out["specificity"] = _value(sens[positive]), _value(spec[positive])
    else:
        out["sensitivity"] = _mean_defined(sens, names, "sensitivity")
        out["specificity"] = _mean_defined(spec, names, "specificity")
    return out


def _multilabel(
    scores: np.ndarray, targets: np.ndarray, names: list[str], threshold: float
) -> dict[str, float]:
    """Multilabel metrics; a label is predicted when its score exceeds ``threshold``."""
    preds = (scores > threshold).astype(np.int64)
    out = {
        "subset_accuracy": float(np.mean(np.all(preds == targets, axis=1))),
        "label_accuracy": float(np.mean(preds == targets)),
    }
    out.update(_multilabel_f1(preds, targets))
    out.update(_ranking(scores, targets, names))
    sens, spec = _rates(preds, targets)
    out["sensitivity"] = _mean_defined(sens, names, "sensitivity")
    out["specificity"] = _mean_defined(spec, names, "specificity")
    return out


def _multilabel_f1(preds: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """F1 macro/micro/samples/weighted as scikit-learn (``zero_division=0``), also for one label."""
    tp = np.sum(preds & truth, axis=0)
    wrong = np.sum(preds ^ truth, axis=0)  # false positives + false negatives
    per_label = _ratio(2 * tp, 2 * tp + wrong)
    support = truth.sum(axis=0)
    row_tp = np.sum(preds & truth, axis=1)
    per_sample = _ratio(2 * row_tp, preds.sum(axis=1) + truth.sum(axis=1))
    return {
        "f1_macro": float(per_label.mean()),
        "f1_micro": float(_ratio(2 * tp.sum(), 2 * tp.sum() + wrong.sum())),
        "f1_samples": float(per_sample.mean()),
        "f1_weighted": float(np.average(per_label, weights=support)) if support.sum() else 0.0,
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator`` with 0 where the denominator is 0."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _ranking(scores: np.ndarray, indicators: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per-class and macro one-vs-rest AUROC and average precision."""
    aurocs: list[float | None] = []
    aps: list[float | None] = []
    for column in range(len(names)):
        truth, score = indicators[:, column], scores[:, column]
        positives = int(truth.sum())
        both = 0 < positives < len(truth)
        aurocs.append(float(roc_auc_score(truth, score)) if both else None)
        aps.append(float(average_precision_score(truth, score)) if positives else None)
    out = {"auroc": _mean_defined(aurocs, names, "auroc"), "map": _mean_defined(aps, names, "map")}
    out.update({f"auroc/{n}": v for n, v in zip(names, aurocs) if v is not None})
    out.update({f"ap/{n}": v for n, v in zip(names, aps) if v is not None})
    return out


def _rates(preds: np.ndarray, truth: np.ndarray) -> tuple[list[float | None], list[float | None]]:
    """Per-column sensitivity and specificity from 0/1 indicator matrices."""
    tp = np.sum((preds == 1) & (truth == 1), axis=0)
    fn = np.sum((preds == 0) & (truth == 1), axis=0)
    tn = np.sum((preds == 0) & (truth == 0), axis=0)
    fp = np.sum((preds == 1) & (truth == 0), axis=0)
    sens = [float(a / (a + b)) if a + b else None for a, b in zip(tp, fn)]
    spec = [float(a / (a + b)) if a + b else None for a, b in zip(tn, fp)]
    return sens, spec


def _value(value: float | None) -> float:
    """A defined value, or NaN."""
    return float("nan") if value is None else value


def _mean_defined(values: list[float | None], names: list[str], metric: str) -> float:
    """Mean over the defined per-class values, warning about the skipped classes."""
    skipped = [n for n, v in zip(names, values) if v is None]
    defined = [v for v in values if v is not None]
    if skipped:
        detail = "it is NaN" if not defined else f"averaged over the other {len(defined)}"
        warnings.warn(
            f"{metric}: undefined for classes {skipped} (no positives or no negatives); {detail}",
            RuntimeWarning,
            stacklevel=3,
        )
    return float(np.mean(defined)) if defined else float("nan")


def format_metrics_table(metrics: dict[str, float], digits: int = 4) -> str:
    """Metrics as aligned text: overall values, then a class x metric table."""
    overall = {k: v for k, v in metrics.items() if "/" not in k}
    per_class: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if "/" in key:
            metric, name = key.split("/", 1)
            per_class.setdefault(name, {})[metric] = value
    width = max((len(k) for k in overall), default=6)
    lines = [f"{'metric':<{width}}  value"]
    lines += [f"{k:<{width}}  {v:.{digits}f}" for k, v in overall.items()]
    if per_class:
        lines += ["", *_class_table(per_class, digits)]
    return "\n".join(lines)


def _class_table(per_class: dict[str, dict[str, float]], digits: int) -> list[str]:
    """Rows of a class x metric table ("-" where a class has no value)."""
    columns = list(dict.fromkeys(m for row in per_class.values() for m in row))
    name_width = max(len("class"), *(len(n) for n in per_class))
    width = max(digits + 2, *(len(c) for c in columns))
    rows = [f"{'class':<{name_width}}  " + "  ".join(f"{c:>{width}}" for c in columns)]
    for name, row in per_class.items():
        cells = [f"{row[c]:>{width}.{digits}f}" if c in row else f"{'-':>{width}}" for c in columns]
        rows.append(f"{name:<{name_width}}  " + "  ".join(cells))
    return rows
