"""Statistics of a report page: operating points, per-class rates, calibration, bootstrap CIs.

Everything works on `~medpeft.reports.scores.SplitScores`. An operating point turns
scores into per-class yes/no decisions: ``argmax`` (multiclass: the top class), a
probability threshold (a class is called when its score exceeds it, one-vs-rest), or
``youden`` (per class, the ROC threshold maximising sensitivity + specificity - 1).

Bootstrap confidence intervals resample the test samples with replacement: each of
the ``resamples`` draws is a row of multinomial counts ``W[r, i]`` (how often sample
``i`` is drawn), and every metric is a count-weighted formula, so all draws are
computed at once with matrix products instead of a Python loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from medpeft.errors import ConfigError
from medpeft.reports.scores import SplitScores

ARGMAX = "argmax"
YOUDEN = "youden"
CALIBRATION_BINS = 10
CHUNK_CELLS = 4_000_000  # resamples x samples per matrix product


@dataclass(frozen=True)
class OperatingPoint:
    """Per-class decisions ``[N, C]`` (0/1) and the threshold of each class (NaN for argmax)."""

    name: str
    decisions: np.ndarray
    thresholds: np.ndarray


def parse_operating_point(text: str | None) -> str | float | None:
    """``--threshold`` as ``argmax``, ``youden``, a probability in (0, 1), or None (default)."""
    if text is None or text in (ARGMAX, YOUDEN):
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise ConfigError(f"--threshold: expected argmax, youden or a probability in (0, 1), got {text!r}")
    return value


def operating_point(scores: SplitScores, point: str | float | None = None) -> OperatingPoint:
    """Decisions at ``point`` (default: argmax for multiclass, 0.5 for multilabel)."""
    if point is None:
        point = ARGMAX if scores.task == "multiclass" else 0.5
    num_classes = len(scores.labels)
    if point == ARGMAX:
        if scores.task != "multiclass":
            raise ConfigError("--threshold argmax needs a multiclass run; use a probability or youden")
        decisions = np.eye(num_classes, dtype=np.int64)[scores.scores.argmax(1)]
        return OperatingPoint(ARGMAX, decisions, np.full(num_classes, np.nan))
    if point == YOUDEN:
        thresholds = np.array([_youden(scores.truth[:, c], scores.scores[:, c]) for c in range(num_classes)])
        name = YOUDEN
    else:
        thresholds = np.full(num_classes, float(point))
        name = f"threshold {float(point):g}"
    decisions = (scores.scores > thresholds).astype(np.int64)
    return OperatingPoint(name, decisions, thresholds)


def _youden(truth: np.ndarray, score: np.ndarray) -> float:
    """Threshold ``t`` (decide ``score > t``) maximising sensitivity + specificity - 1."""
    if truth.min() == truth.max():
        return 0.5
    fpr, tpr, cuts = roc_curve(truth, score)
    best = int(np.argmax(tpr - fpr))
    # roc_curve decides score >= cut; the largest score below the cut gives the same split with >.
    below = score[score < cuts[best]]
    return float(below.max()) if below.size else float(np.nextafter(cuts[best], -np.inf))


def class_counts(truth: np.ndarray, decisions: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """True/false positive/negative counts per class, ``[C]`` (or ``[R, C]`` with weights ``[R, N]``)."""
    cells = {
        "tp": decisions & truth, "fn": (1 - decisions) & truth,
        "fp": decisions & (1 - truth), "tn": (1 - decisions) & (1 - truth),
    }
    if weights is None:
        return {k: v.sum(0).astype(np.float64) for k, v in cells.items()}
    return {k: weights @ v.astype(np.float64) for k, v in cells.items()}


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den`` is 0."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def class_rates(scores: SplitScores, point: OperatingPoint) -> dict[str, np.ndarray]:
    """Per class: support, counts, sensitivity, specificity, PPV, NPV at the operating point."""
    counts = class_counts(scores.truth, point.decisions)
    tp, fn, fp, tn = counts["tp"], counts["fn"], counts["fp"], counts["tn"]
    return {
        **counts,
        "support": tp + fn,
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
    }


@dataclass(frozen=True)
class Calibration:
    """Reliability bins: mean confidence, observed frequency, counts; expected calibration error."""

    confidence: np.ndarray
    frequency: np.ndarray
    counts: np.ndarray
    ece: float
    what: str


def calibration(scores: SplitScores, bins: int = CALIBRATION_BINS) -> Calibration:
    """Equal-width reliability bins and ECE.

    Multiclass: the top class's probability against whether it is right. Multilabel:
    every label probability against whether the label is present.
    """
    if scores.task == "multiclass":
        confidence = scores.scores.max(1)
        outcome = (scores.scores.argmax(1) == scores.targets).astype(float)
        what = "top-class probability"
    else:
        confidence, outcome = scores.scores.ravel(), scores.truth.ravel().astype(float)
        what = "label probability"
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(float)
    mean_conf = ratio(np.bincount(index, confidence, bins), counts)
    frequency = ratio(np.bincount(index, outcome, bins), counts)
    gaps = np.nan_to_num(np.abs(frequency - mean_conf))
    return Calibration(mean_conf, frequency, counts, float((counts * gaps).sum() / counts.sum()), what)


def weighted_auroc(score: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of one class under sample weights ``[R, N]`` -> ``[R]`` (NaN without both classes).

    Counts pairs (positive above negative, ties half) weighted by both samples'
    weights; integer weights give the AUROC of the resampled data.
    """
    order = np.argsort(score, kind="stable")
    ranked, positive = score[order], truth[order].astype(bool)
    w = weights[:, order]
    negatives = w * ~positive
    below_or_at = np.concatenate([np.zeros((len(w), 1)), np.cumsum(negatives, 1)], 1)
    first = np.searchsorted(ranked, ranked, side="left")
    after = np.searchsorted(ranked, ranked, side="right")
    below = below_or_at[:, first[positive]]
    ties = below_or_at[:, after[positive]] - below
    pairs = (w[:, positive] * (below + 0.5 * ties)).sum(1)
    return ratio(pairs, w[:, positive].sum(1) * negatives.sum(1))


Headline = Callable[[np.ndarray], dict[str, np.ndarray]]


def headline_metrics(scores: SplitScores, point: OperatingPoint, positive: int = 1) -> Headline:
    """Function of sample weights ``[R, N]`` -> headline metric name -> values ``[R]``.

    Multiclass: accuracy, balanced accuracy and macro F1 of the argmax, macro AUROC
    (two classes: that of the positive class, index ``positive``); sensitivity and
    specificity at the operating point (macro, or the positive class's). Multilabel:
    macro and micro F1, macro sensitivity and specificity at the operating point, macro AUROC.
    """
    truth, binary = scores.truth, scores.task == "multiclass" and len(scores.labels) == 2
    top = np.eye(len(scores.labels), dtype=np.int64)[scores.scores.argmax(1)]

    def mean(values: np.ndarray) -> np.ndarray:
        return values[:, positive] if binary else _nanmean(values)

    def compute(weights: np.ndarray) -> dict[str, np.ndarray]:
        op = class_counts(truth, point.decisions, weights)
        auroc = np.stack(
            [weighted_auroc(scores.scores[:, c], truth[:, c], weights) for c in range(truth.shape[1])], 1
        )
        out: dict[str, np.ndarray] = {}
        if scores.task == "multiclass":
            am = class_counts(truth, top, weights)
            out["accuracy"] = am["tp"].sum(1) / weights.sum(1)
            out["balanced_accuracy"] = _nanmean(ratio(am["tp"], am["tp"] + am["fn"]))
            out["f1_macro"] = _nanmean(ratio(2 * am["tp"], 2 * am["tp"] + am["fp"] + am["fn"]))
        else:
            out["f1_macro"] = _nanmean(ratio(2 * op["tp"], 2 * op["tp"] + op["fp"] + op["fn"]))
            tp, wrong = op["tp"].sum(1), (op["fp"] + op["fn"]).sum(1)
            out["f1_micro"] = ratio(2 * tp, 2 * tp + wrong)
        out["auroc"] = mean(auroc)
        out["sensitivity"] = mean(ratio(op["tp"], op["tp"] + op["fn"]))
        out["specificity"] = mean(ratio(op["tn"], op["tn"] + op["fp"]))
        return out

    return compute


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Row means over the defined (non-NaN) columns; NaN for a row with none."""
    defined = ~np.isnan(values)
    return ratio(np.where(defined, values, 0.0).sum(1), defined.sum(1))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    value: float
    low: float
    high: float


def bootstrap(
    metrics: Headline, num_samples: int, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Interval]:
    """Point estimates and ``level`` percentile intervals from seeded bootstrap resamples."""
    if resamples < 1:
        raise ConfigError(f"--resamples: expected a number of bootstrap resamples >= 1, got {resamples}")
    point = {name: float(v[0]) for name, v in metrics(np.ones((1, num_samples))).items()}
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_CELLS // max(num_samples, 1))
    draws: dict[str, list[np.ndarray]] = {name: [] for name in point}
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        weights = rng.multinomial(num_samples, np.full(num_samples, 1.0 / num_samples), size).astype(float)
        for name, values in metrics(weights).items():
            draws[name].append(values)
    tails = [50 * (1 - level), 100 - 50 * (1 - level)]
    out = {}
    for name, value in point.items():
        values = np.concatenate(draws[name])
        values = values[~np.isnan(values)]
        low, high = np.percentile(values, tails) if values.size else (np.nan, np.nan)
        out[name] = Interval(value, float(low), float(high))
    return out
