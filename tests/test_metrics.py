"""compute_metrics against values worked out by hand on tiny arrays."""

import warnings

import numpy as np
import pytest
import torch

from medpeft.metrics import compute_metrics, format_metrics_table

# Predictions 0,1,1,1,2,0 for targets 0,0,1,1,2,2 (columns: class 0, 1, 2).
MC_SCORES = np.array(
    [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1],
     [0.1, 0.6, 0.3], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
)
MC_TARGETS = np.array([0, 0, 1, 1, 2, 2])


def test_multiclass_known_confusion_matrix():
    m = compute_metrics("multiclass", MC_SCORES, MC_TARGETS, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)  # per-class F1 from P/R
    assert m["sensitivity"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["specificity"] == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)
    # class a: positives score .8,.2; negatives .1,.1,.1,.5 -> 7 of 8 pairs ordered right
    assert m["auroc/a"] == pytest.approx(7 / 8)
    assert m["auroc"] == pytest.approx(np.mean([m["auroc/a"], m["auroc/b"], m["auroc/c"]]))


def test_binary_uses_positive_class():
    scores1 = np.array([0.1, 0.6, 0.4, 0.9])
    m = compute_metrics("multiclass", np.stack([1 - scores1, scores1], 1), [0, 0, 1, 1])
    assert m["auroc"] == pytest.approx(3 / 4)  # pos .4 < neg .6 is the one wrong pair
    assert m["map"] == pytest.approx((1 + 2 / 3) / 2)  # ranked: + - + -
    assert m["sensitivity"] == pytest.approx(1 / 2)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["accuracy"] == pytest.approx(1 / 2)


def test_binary_metrics_follow_the_chosen_positive_class():
    # abnormal (index 0) vs normal: predictions 0,0,0,1 for targets 0,0,1,1
    scores0 = np.array([0.9, 0.7, 0.6, 0.2])
    scores = np.stack([scores0, 1 - scores0], 1)
    m = compute_metrics("multiclass", scores, [0, 0, 1, 1], ["abnormal", "normal"], positive=0)
    assert m["sensitivity"] == pytest.approx(1.0)  # both abnormal found
    assert m["specificity"] == pytest.approx(1 / 2)  # one normal called abnormal
    assert m["auroc"] == pytest.approx(m["auroc/abnormal"]) == pytest.approx(1.0)
    default = compute_metrics("multiclass", scores, [0, 0, 1, 1], ["abnormal", "normal"])
    assert (default["sensitivity"], default["specificity"]) == pytest.approx((1 / 2, 1.0))  # index 1


def test_perfect_multiclass_predictions():
    targets = np.array([0, 1, 2, 3, 1])
    m = compute_metrics("multiclass", np.eye(4)[targets] * 0.7 + 0.075, targets)
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "map",
                "sensitivity", "specificity"):
        assert m[key] == pytest.approx(1.0), key


def test_multilabel_known_values():
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.9, 0.2], [0.3, 0.4], [0.8, 0.7], [0.6, 0.1]])  # preds 10, 00, 11, 10
    m = compute_metrics("multilabel", scores, targets)
    assert m["f1_macro"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert m["f1_micro"] == pytest.approx(6 / 8)  # tp 3, fp 1, fn 1
    assert m["f1_weighted"] == pytest.approx((4 / 5 + 2 / 3) / 2)  # equal supports
    assert m["f1_samples"] == pytest.approx(0.5)  # rows: 1, 0, 1, 0
    assert m["subset_accuracy"] == pytest.approx(0.5)
    assert m["label_accuracy"] == pytest.approx(6 / 8)
    assert m["sensitivity"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["specificity"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["auroc/0"] == pytest.approx(1.0)  # positives .9,.8 above negatives .3,.6
    assert m["auroc/1"] == pytest.approx(1.0)  # positives .4,.7 above negatives .2,.1


def test_tensors_give_same_result_as_numpy():
    expected = compute_metrics("multiclass", MC_SCORES, MC_TARGETS)
    scores = torch.tensor(MC_SCORES, dtype=torch.float32)
    got = compute_metrics("multiclass", scores, torch.tensor(MC_TARGETS))
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(expected[k]) for k in expected)


def test_class_absent_from_targets_is_skipped_with_warning():
    scores = MC_SCORES[:4]  # targets 0,0,1,1: class 2 never occurs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = compute_metrics("multiclass", scores, MC_TARGETS[:4])
    skipped = {str(w.message).split(":")[0] for w in caught if "classes ['2']" in str(w.message)}
    assert skipped == {"auroc", "map", "sensitivity"}  # class 2 has negatives: specificity is fine
    assert "auroc/2" not in m and "ap/2" not in m
    assert m["auroc"] == pytest.approx((m["auroc/0"] + m["auroc/1"]) / 2)
    assert not np.isnan(m["map"])


def test_all_classes_undefined_gives_nan_with_warning():
    with pytest.warns(RuntimeWarning, match="it is NaN"):
        m = compute_metrics("multilabel", np.array([[0.2], [0.7]]), np.array([[1], [1]]))
    assert np.isnan(m["auroc"])
    assert m["map"] == pytest.approx(1.0)  # AP is defined: positives only


@pytest.mark.parametrize(
    "task, scores, targets",
    [
        ("multiclass", np.ones((3, 2)), np.array([0, 1])),
        ("multiclass", np.ones((2, 2)), np.array([0, 2])),
        ("multilabel", np.ones((2, 3)), np.ones((2, 2))),
        ("multilabel", np.ones((2, 2)), np.array([[0.0, 0.9], [1.0, 0.0]])),  # soft labels
        ("regression", np.ones((2, 2)), np.array([0, 1])),
        ("multiclass", np.full((2, 2), np.nan), np.array([0, 1])),
    ],
)
def test_bad_inputs_raise(task, scores, targets):
    with pytest.raises(ValueError):
        compute_metrics(task, scores, targets)


def test_format_metrics_table():
    metrics = compute_metrics("multiclass", MC_SCORES, MC_TARGETS, ["a", "b", "c"])
    text = format_metrics_table(metrics)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert any(line.split() == ["accuracy", "0.6667"] for line in lines)
    assert any(line.split() == ["class", "auroc", "ap"] for line in lines)
    assert any(line.split()[:2] == ["a", "0.8750"] for line in lines)


def test_multilabel_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    targets = (rng.random((40, 5)) < 0.3).astype(int)
    targets[:, 4] = 0  # a label that never occurs
    scores = rng.random((40, 5))
    with pytest.warns(RuntimeWarning):
        m = compute_metrics("multilabel", scores, targets)
    preds = (scores > 0.5).astype(int)
    for average in ("macro", "micro", "samples", "weighted"):
        expected = f1_score(targets, preds, average=average, zero_division=0)
        assert m[f"f1_{average}"] == pytest.approx(expected), average
