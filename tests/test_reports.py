"""Reports: markdown tables, missing-grid plots, statistics and the run report page."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.errors import ConfigError
from medpeft.metrics import compute_metrics
from medpeft.reports import (
    markdown_table,
    missing_grid_table,
    plot_missing_curves,
    plot_missing_heatmap,
)
from medpeft.reports.page import write_report_page
from medpeft.reports.scores import SplitScores
from medpeft.reports.stats import (
    bootstrap,
    calibration,
    class_rates,
    headline_metrics,
    operating_point,
    parse_operating_point,
    weighted_auroc,
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


# --- the run report page (medpeft report) -------------------------------------------------

CPU = ["train.amp=false", "train.device=cpu", "data.num_workers=0", "train.epochs=2", "--quiet"]
TINY = [
    "model.backbone=vit_tiny_patch16_224", "model.img_size=32", "model.pretrained=false",
    "model.kwargs={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
    "data.batch_size=16", "train.lr=0.003", "train.warmup=0", "data.source=csv",
]
QUIET = pytest.mark.filterwarnings("ignore:.*undefined for classes:RuntimeWarning")
PLOTS = {"training_curves.png", "roc.png", "pr.png", "confusion.png", "calibration.png"}


def _scores(task: str, n: int = 200, classes: int = 3, seed: int = 0) -> SplitScores:
    """Informative random scores: the true class (or present labels) score higher."""
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(classes)]
    if task == "multiclass":
        targets = rng.integers(0, classes, n)
        logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[targets]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return SplitScores(labels, task, np.round(probs, 3), targets)
    targets = (rng.random((n, classes)) < 0.4).astype(int)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, classes)) + 2 * targets - 1)))
    return SplitScores(labels, task, np.round(probs, 2), targets)


def test_weighted_auroc_equals_sklearn_on_the_resampled_data():
    scores = _scores("multiclass")
    rng = np.random.default_rng(1)
    counts = rng.multinomial(200, np.full(200, 1 / 200), size=3).astype(float)
    got = weighted_auroc(scores.scores[:, 1], scores.truth[:, 1], counts)
    for row, value in zip(counts.astype(int), got):
        index = np.repeat(np.arange(200), row)  # ties in the rounded scores count half
        assert value == pytest.approx(roc_auc_score(scores.truth[index, 1], scores.scores[index, 1]))


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_bootstrap_point_estimates_match_compute_metrics_and_are_seeded(task):
    scores = _scores(task)
    point = operating_point(scores)  # argmax / 0.5, the thresholds of compute_metrics
    metrics = headline_metrics(scores, point)
    first = bootstrap(metrics, 200, resamples=300, seed=3)
    reference = compute_metrics(task, scores.scores, scores.targets, scores.labels)
    for name, interval in first.items():
        assert interval.value == pytest.approx(reference[name]), name
        assert interval.low <= interval.value <= interval.high
        assert 0 < interval.high - interval.low < 0.3
    assert bootstrap(metrics, 200, resamples=300, seed=3) == first
    assert bootstrap(metrics, 200, resamples=300, seed=4) != first


def test_operating_points_and_per_class_rates():
    scores = _scores("multiclass", classes=2)
    youden = operating_point(scores, parse_operating_point("youden"))
    fixed = operating_point(scores, parse_operating_point("0.5"))
    truth, score = scores.truth[:, 1], scores.scores[:, 1]
    fpr, tpr, _ = roc_curve(truth, score)
    rates = class_rates(scores, youden)
    assert rates["sensitivity"][1] + rates["specificity"][1] - 1 == pytest.approx(np.max(tpr - fpr))
    assert rates["support"].tolist() == scores.truth.sum(0).tolist()
    assert class_rates(scores, fixed)["sensitivity"][1] == np.mean(score[truth == 1] > 0.5)
    with pytest.raises(ConfigError, match="threshold"):
        parse_operating_point("1.5")
    with pytest.raises(ConfigError, match="multiclass"):
        operating_point(_scores("multilabel"), "argmax")


def test_calibration_of_perfectly_calibrated_scores_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(20000)
    scores = SplitScores(["no", "yes"], "multilabel", np.stack([1 - p, p], 1), (rng.random((20000, 2)) < np.stack([1 - p, p], 1)).astype(int))
    assert calibration(scores).ece < 0.02
    overconfident = SplitScores(["no", "yes"], "multilabel", np.stack([1 - p, p], 1) ** 0.2, scores.targets)
    assert calibration(overconfident).ece > 0.2


def test_scores_csv_round_trip(tmp_path):
    for task in ("multiclass", "multilabel"):
        scores = _scores(task, n=20)
        back = SplitScores.read_csv(scores.write_csv(tmp_path / f"{task}.csv"), task)
        assert back.labels == scores.labels
        np.testing.assert_array_equal(back.targets, scores.targets)
        np.testing.assert_allclose(back.scores, scores.scores)


def test_scores_csv_written_before_sample_ids_still_reads(tmp_path):
    old = tmp_path / "predictions_test.csv"
    old.write_text("target,a,b\nb,0.2,0.8\na,0.6,0.4\n")
    scores = SplitScores.read_csv(old, "multiclass")
    assert scores.labels == ["a", "b"] and scores.ids is None and scores.paths is None
    np.testing.assert_array_equal(scores.targets, [1, 0])
    np.testing.assert_allclose(scores.scores, [[0.2, 0.8], [0.6, 0.4]])


def test_scores_csv_names_each_sample_and_its_prediction(tmp_path):
    scores = SplitScores(["a", "b", "c"], "multilabel", np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.4]]),
                         np.array([[1, 0, 0], [0, 0, 1]]), ["s1", "=s2"],
                         {"path_ct": ["x/1.png", "x/2.png|x/3.png"], "path_mri": ["m/1.png", ""]})
    lines = scores.write_csv(tmp_path / "p.csv").read_text().splitlines()
    assert lines == ["id,path_ct,path_mri,target,predicted,a,b,c", "s1,x/1.png,m/1.png,a,a|b,0.9,0.6,0.1",
                     "'=s2,x/2.png|x/3.png,,c,,0.2,0.3,0.4"]
    back = SplitScores.read_csv(tmp_path / "p.csv", "multilabel")
    assert back.ids == ["s1", "=s2"] and back.paths == scores.paths and back.labels == ["a", "b", "c"]
    np.testing.assert_array_equal(back.targets, scores.targets)


def _train(tmp_path, manifest: Path, *extra: str) -> Path:
    run = tmp_path / "run"
    argv = ["train", "melo_shenzhen", f"output_dir={run}", f"data.manifest={manifest}", *TINY, *CPU, *extra]
    assert main(argv) == 0
    return run


def _check_page(run: Path, out: Path, plots: set[str], default_point: bool = True) -> dict:
    """Check the page's files; its headline values are the run's test metrics (those at the
    operating point only when it is the default, that of the metrics)."""
    page = (out / "index.html").read_text()
    assert set(p.name for p in out.glob("*.png")) == plots
    assert page.count("data:image/png;base64,") == len(plots)  # self-contained
    summary = json.loads((out / "summary.json").read_text())
    report = json.loads((run / "report.json").read_text())
    for name, interval in summary["headline"].items():
        if not default_point and name in ("sensitivity", "specificity"):
            continue
        assert interval["value"] == pytest.approx(report["test"]["metrics"][name]), name
    return summary


@QUIET
def test_report_of_a_binary_run_is_about_its_positive_class(tmp_path):
    manifest = make_synthetic_dataset(tmp_path / "data", ("normal", "abnormal"), n_per_class=12, img_size=32)
    run = _train(tmp_path, manifest)
    write_report_page(run, tmp_path / "page", resamples=50)
    summary = _check_page(run, tmp_path / "page", PLOTS)
    assert summary["positive_class"] == "abnormal"  # labels abnormal, normal: index 0
    for name in ("sensitivity", "specificity"):  # the headline is the positive class's row
        assert summary["headline"][name]["value"] == pytest.approx(summary["per_class"]["abnormal"][name])
    page = (tmp_path / "page" / "index.html").read_text()
    assert "<td>positive class</td><td>abnormal</td>" in page
    assert "<td>sensitivity (abnormal)</td>" in page and "<td>auroc (abnormal)</td>" in page
    assert "(AUROC in brackets); positive class: abnormal." in page
    assert "Positive class: abnormal; each row counts its own class as positive." in page
    for name in ("adapter/adapter_config.json", "report.json"):  # a run from before medpeft recorded it
        data = json.loads((run / name).read_text())
        del data["positive_class"]
        (run / name).write_text(json.dumps(data))
    write_report_page(run, tmp_path / "old", resamples=50)
    assert json.loads((tmp_path / "old" / "summary.json").read_text())["positive_class"] == "normal"


@QUIET
def test_report_of_a_multilabel_run(tmp_path):
    manifest = make_synthetic_dataset(tmp_path / "data", ("a", "b", "c"), n_per_class=8, img_size=32,
                                      task="multilabel")
    run = _train(tmp_path, manifest, "data.task=multilabel", "train.monitor=f1_macro")
    result = write_report_page(run, tmp_path / "page", resamples=100)
    summary = _check_page(run, tmp_path / "page", PLOTS)
    assert result.operating_point == summary["operating_point"] == "threshold 0.5"
    assert "f1_micro" in summary["headline"] and "accuracy" not in summary["headline"]


@QUIET
def test_report_of_a_multimodal_run_without_saved_scores(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "mora_synthetic", f"output_dir={run}", "model.img_size=16",
            "model.kwargs={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "data.num_samples=40",
            "data.batch_size=16", "missing.grid.etas=[0.5]", *CPU]
    assert main(argv) == 0
    (run / "predictions_test.csv").unlink()  # a run trained before scores were saved
    assert main(["report", str(run), "--threshold", "youden", "--resamples", "200"]) == 0
    assert (run / "predictions_test.csv").is_file()
    assert f"wrote {run / 'report' / 'index.html'}" in capsys.readouterr().out
    summary = _check_page(run, run / "report", PLOTS | {"missing_heatmap.png"}, default_point=False)
    assert summary["method"] == "mora" and summary["operating_point"] == "youden"
    assert len(summary["per_class"]) == 4
    assert summary["params"]["trainable"] > 0 and summary["adapter_weights_bytes"] > 0
    assert "Missing-modality grid" in (run / "report" / "index.html").read_text()


def test_report_refuses_a_folder_that_is_not_a_finished_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "report.json" in capsys.readouterr().err


@QUIET
def test_a_report_reads_back_label_names_a_spreadsheet_would_evaluate(tmp_path):
    labels = ["-1", "=1+1"]
    manifest = make_synthetic_dataset(tmp_path / "data", labels, n_per_class=8, img_size=32)
    run = _train(tmp_path, manifest, "train.epochs=1", "data.positive_class=-1")  # YAML: the integer -1
    scores_csv = (run / "predictions_test.csv").read_text().splitlines()
    assert scores_csv[0] == "id,path,target,predicted,-1,'=1+1"  # escaped for spreadsheets; -1 is a number
    assert {row.split(",")[2] for row in scores_csv[1:]} == {"-1", "'=1+1"}
    write_report_page(run, tmp_path / "page", resamples=50)
    summary = json.loads((tmp_path / "page" / "summary.json").read_text())
    assert list(summary["per_class"]) == labels

    (run / "predictions_test.csv").unlink()  # from Python, without an `evaluate` to write them again
    with pytest.raises(ConfigError) as error:
        write_report_page(run, tmp_path / "page2", resamples=50)
    assert str(error.value) == f"{run}: no predictions_test.csv; evaluate the run first (medpeft eval {run})"


def test_scores_csv_escapes_formulas_and_reads_them_back(tmp_path):
    labels = ["=HYPERLINK(\"http://x\",\"y\")", "-1", "+x", "@sum", "'quoted", "plain"]
    scores = SplitScores(labels, "multilabel", np.full((2, 6), 0.5), np.array([[1, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 1]]))
    path = scores.write_csv(tmp_path / "scores.csv")
    header = path.read_text().splitlines()[0]
    assert header == "target,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",-1,'+x,'@sum,''quoted,plain"
    back = SplitScores.read_csv(path, "multilabel")
    assert back.labels == labels
    np.testing.assert_array_equal(back.targets, scores.targets)


@QUIET
def test_predictions_name_each_sample_and_the_page_shows_the_worst_mistakes(tmp_path):
    manifest = make_synthetic_dataset(tmp_path / "data", ("normal", "abnormal"), n_per_class=12, img_size=32)
    run = _train(tmp_path, manifest, "train.epochs=1")
    with open(run / "predictions_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:4] == ["id", "path", "target", "predicted"]
    assert all(Path(row["path"]).is_file() for row in rows)
    for row in rows:  # the predicted label is the top score's
        assert row["predicted"] == max(("abnormal", "normal"), key=lambda label: float(row[label]))
    wrong = [row for row in rows if row["predicted"] != row["target"]]
    assert wrong, "a one-epoch tiny model is expected to make mistakes"
    write_report_page(run, tmp_path / "page", resamples=20)
    page = (tmp_path / "page" / "index.html").read_text()
    section = page[page.index("<h2>Misclassified samples</h2>"):]
    section = section[:section.index("</section>")]
    missed = sum(row["target"] == "abnormal" for row in wrong)  # the positive class's false negatives
    assert section.count('<img src="data:image/jpeg;base64,') == min(missed, 8) + min(len(wrong) - missed, 8)
    shown = re.findall(r'<a href="([^"]+)"><img src="data:image/jpeg;base64,', section)
    assert shown and all((tmp_path / "page" / href).resolve().is_file() for href in shown)
    assert {row["id"] for row in wrong} >= set(re.findall(r"<figcaption>([^<]+)<br>", section))

