"""``medpeft eval`` / ``medpeft.runs.evaluate``: a finished run's adapter rebuilt from its folder."""

from __future__ import annotations

import json

import pytest

from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.reports.scores import SplitScores
from medpeft.runs.evaluate import Evaluation, evaluate_run

from .conftest import CPU, one_line

OWN_RESULTS = ("test_metrics.json", "predictions_test.csv", "report.json", "config.yaml")


def test_eval_one_modality_run_on_val(image_run, capsys):
    assert main(["eval", str(image_run), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "auroc" in out and "\\ eta" not in out  # one modality: no missing-modality grid
    assert "auroc" in json.loads((image_run / "val_metrics.json").read_text())


def test_evaluate_run_reproduces_the_test_metrics_of_training(image_run):
    recorded = json.loads((image_run / "test_metrics.json").read_text())
    evaluation = evaluate_run(image_run, overrides=CPU)
    assert isinstance(evaluation, Evaluation) and evaluation.split == "test"
    assert evaluation.grid == {}
    assert recorded.pop("positive_class") == "lesion"  # normal / lesion: normal is the negative
    assert evaluation.metrics == pytest.approx(recorded, nan_ok=True)


def test_eval_mora_run_rebuilds_the_model_and_sweeps_the_grid(mora_run, capsys):
    recorded = json.loads((mora_run / "test_metrics.json").read_text())
    assert main(["eval", str(mora_run)]) == 0  # rebuilds the same model from the run folder
    out = capsys.readouterr().out
    assert "f1_macro \\ eta" in out and "| both |" in out
    evaluated = json.loads((mora_run / "test_metrics.json").read_text())
    assert evaluated == pytest.approx(recorded, nan_ok=True)


def test_evaluate_mora_run_on_val_writes_its_own_grid(mora_run):
    evaluation = evaluate_run(mora_run, split="val")
    assert set(evaluation.grid) == {(kind, eta) for kind in ("a", "b", "both") for eta in (0.3, 0.9)}
    assert all("/" not in key for metrics in evaluation.grid.values() for key in metrics)
    assert evaluation.metric == "f1_macro" and "f1_macro" in evaluation.metrics
    assert len(json.loads((mora_run / "grid_val.json").read_text())) == 6
    assert (mora_run / "grid_val.md").is_file() and (mora_run / "val_metrics.json").is_file()
    assert (mora_run / "grid.md").is_file()  # the test grid is kept


def test_eval_with_a_bad_override_names_the_key(mora_run, capsys):
    assert main(["eval", str(mora_run), "missing.grid.kinds=[a, c]"]) == 2
    assert "missing.grid.kinds" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"data: unknown key\(s\) \['shuffle'\]"):
        evaluate_run(mora_run, overrides=["data.shuffle=true"])


def test_eval_with_another_adapter_writes_into_evals(image_run, tmp_path, train_image, capsys):
    other = train_image(tmp_path / "other", "train.epochs=1", "train.lr=0.02")
    own = {name: (image_run / name).read_bytes() for name in OWN_RESULTS}
    assert main(["eval", str(image_run), "--adapter", str(other / "adapter")]) == 0
    folder = image_run / "evals" / "other"
    assert f"results in {folder}" in capsys.readouterr().out
    assert {name: (image_run / name).read_bytes() for name in OWN_RESULTS} == own
    # the same data, split and seed: the other adapter scores what its own run recorded
    scores = json.loads((folder / "test_metrics.json").read_text())
    assert scores == pytest.approx(json.loads((other / "test_metrics.json").read_text()), nan_ok=True)
    assert json.loads((folder / "eval.json").read_text())["adapter"] == str((other / "adapter").resolve())


def test_an_adapter_of_another_input_size_is_one_line(image_run, tmp_path, train_image, capsys):
    adapter = train_image(tmp_path / "large", "train.epochs=1", "model.img_size=48") / "adapter"
    assert main(["eval", str(image_run), "--adapter", str(adapter)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"medpeft eval: error: {adapter}: the adapter takes 48 px inputs, the run's are 32 px "
        "(model.img_size); evaluate it with model.img_size=48"
    )
    assert not (image_run / "evals" / "large").exists()
    assert main(["eval", str(image_run), "--adapter", str(adapter), "model.img_size=48"]) == 0
    assert (image_run / "evals" / "large" / "test_metrics.json").is_file()


def test_a_binary_run_records_its_positive_class_and_its_metrics_are_about_it(image_run):
    metrics = json.loads((image_run / "test_metrics.json").read_text())
    report = json.loads((image_run / "report.json").read_text())
    adapter = json.loads((image_run / "adapter" / "adapter_config.json").read_text())
    assert adapter["labels"] == ["lesion", "normal"]  # the positive class sorts first
    assert metrics["positive_class"] == report["positive_class"] == adapter["positive_class"] == "lesion"
    scores = SplitScores.read_csv(image_run / "predictions_test.csv", "multiclass")
    called, lesion = scores.scores.argmax(1) == 0, scores.targets == 0
    assert metrics["sensitivity"] == pytest.approx(called[lesion].mean())
    assert metrics["specificity"] == pytest.approx((~called[~lesion]).mean())
    assert metrics["auroc"] == metrics["auroc/lesion"]
    assert report["test"]["metrics"]["sensitivity"] == metrics["sensitivity"]
