"""Inference on frozen layers held in bf16 or int8: ``medpeft eval`` rebuilds a run's own
``model.frozen_dtype``, ``medpeft predict --frozen-dtype`` picks one."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from medpeft.cli import main
from medpeft.errors import ConfigError
from medpeft.frozen_dtype import Int8WeightLinear
from medpeft.run_layout import ADAPTER_DIR
from medpeft.runs.evaluate import evaluate_run
from medpeft.runs.predict import predict_files
from tests.bank.conftest import write_method_task
from tests.methods.conftest import _tiny_vit

from .conftest import CPU, one_line

# int8 rows (one step: 1/127 of the row's largest weight) and bf16 matmuls move the tiny run's
# two-class probabilities (near 0.5 after one epoch) by at most 2.6e-4 (measured), 100x less
# than 0.01; distinct scores show the low dtype was used
PROBABILITY_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory, train_image) -> Path:
    return train_image(tmp_path_factory.mktemp("int8") / "run", "train.epochs=1", "model.frozen_dtype=int8")


def scores(path: Path) -> dict[str, list[float]]:
    """Per-sample probabilities of a predictions CSV (``id`` -> the label columns' values)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    labels = [c for c in rows[0] if c in ("lesion", "normal")]
    return {row["id"]: [float(row[c]) for c in labels] for row in rows}


def test_eval_of_an_int8_run_rebuilds_int8_layers_and_reproduces_its_test_scores(int8_run, monkeypatch):
    recorded = scores(int8_run / "predictions_test.csv")
    metrics = json.loads((int8_run / "test_metrics.json").read_text())
    built = []
    real = Int8WeightLinear.forward
    monkeypatch.setattr(Int8WeightLinear, "forward", lambda self, x: built.append(self) or real(self, x))

    evaluation = evaluate_run(int8_run, overrides=CPU)

    assert built  # the rebuilt backbone runs int8 Linear layers, as the run trained
    assert scores(int8_run / "predictions_test.csv") == recorded
    metrics.pop("positive_class")
    assert evaluation.metrics == pytest.approx(metrics, nan_ok=True)


def test_eval_on_fp32_frozen_layers_writes_elsewhere_and_scores_close(int8_run):
    recorded = scores(int8_run / "predictions_test.csv")

    evaluate_run(int8_run, overrides=[*CPU, "model.frozen_dtype=float32"])

    fp32 = scores(int8_run / "evals" / "eval" / "predictions_test.csv")
    assert fp32.keys() == recorded.keys() and fp32 != recorded
    for key, row in fp32.items():
        assert row == pytest.approx(recorded[key], abs=PROBABILITY_TOLERANCE)
    assert scores(int8_run / "predictions_test.csv") == recorded  # the run's own results untouched


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_predict_with_low_precision_frozen_layers_scores_close_to_fp32(image_run, image_manifest, dtype):
    images = [str(p) for p in sorted((image_manifest.parent / "images").glob("*.png"))[:6]]
    adapter = image_run / ADAPTER_DIR

    low = predict_files(adapter, images, device="cpu", frozen_dtype=dtype)
    fp32 = predict_files(adapter, images, device="cpu")

    assert low.ids == fp32.ids and low.scores != fp32.scores
    for got, want in zip(low.scores, fp32.scores):
        assert got == pytest.approx(want, abs=PROBABILITY_TOLERANCE)


def test_predict_cli_takes_the_frozen_dtype(image_run, image_manifest, tmp_path, capsys):
    images = [str(p) for p in sorted((image_manifest.parent / "images").glob("*.png"))[:2]]
    out = tmp_path / "int8.csv"
    argv = ["predict", str(image_run / ADAPTER_DIR), *images, "--output", str(out), "--quiet", "--device", "cpu"]

    assert main([*argv, "--frozen-dtype", "int8"]) == 0
    assert list(scores(out)) == images

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--frozen-dtype", "float64"])
    assert exit_.value.code == 2
    assert "argument --frozen-dtype: invalid choice: 'float64'" in capsys.readouterr().err


def test_an_adapter_that_reads_the_frozen_weights_is_refused_on_int8_in_one_line(tmp_path, image_manifest, capsys):
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=5).state_dict().items()}, str(weights))
    folder = write_method_task(tmp_path, "dora", "dora", weights, seed=1)
    image = str(next((image_manifest.parent / "images").glob("*.png")))

    assert main(["predict", str(folder), image, "--frozen-dtype", "int8", "--device", "cpu"]) == 2
    assert one_line(capsys.readouterr().err) == (
        "medpeft predict: error: frozen_dtype: int8 does not apply to method 'dora': its layers compute "
        "with the frozen weights' values; use bfloat16"
    )
    with pytest.raises(ConfigError, match="^frozen_dtype: int8 does not apply to method 'dora'"):
        predict_files(folder, [image], device="cpu", frozen_dtype=torch.int8)


def test_eval_of_an_fp32_run_on_int8_layers_writes_into_evals(image_run, monkeypatch, capsys):
    own = (image_run / "predictions_test.csv").read_bytes()
    built = []
    real = Int8WeightLinear.forward
    monkeypatch.setattr(Int8WeightLinear, "forward", lambda self, x: built.append(self) or real(self, x))

    assert main(["eval", str(image_run), "model.frozen_dtype=int8"]) == 0

    assert built
    folder = Path(re.search(r"results in (\S+)", capsys.readouterr().out).group(1))
    assert folder.parent == image_run / "evals"
    int8 = scores(folder / "predictions_test.csv")
    assert int8 != scores(image_run / "predictions_test.csv")
    assert (image_run / "predictions_test.csv").read_bytes() == own
