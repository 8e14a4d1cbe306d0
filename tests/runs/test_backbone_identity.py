"""A run records the sha256 of its backbone weights; ``medpeft eval`` refuses a replaced file."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import save_file

from medpeft.adapters_io.config import read_adapter_config
from medpeft.cli import main
from tests.methods.conftest import _tiny_vit

from .conftest import one_line, snapshot


def write_backbone(path: Path, seed: int) -> str:
    """The tiny run backbone (dim 32, depth 2, 8 px patches) of ``seed``; its sha256."""
    save_file({k: v.contiguous() for k, v in _tiny_vit(seed=seed).state_dict().items()}, str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def weights_run(tmp_path_factory, train_image) -> tuple[Path, Path, str]:
    """``(run, weights, sha256)``: a one-epoch run on a local backbone checkpoint."""
    root = tmp_path_factory.mktemp("weights_run")
    weights = root / "backbone.safetensors"
    digest = write_backbone(weights, seed=123)
    return train_image(root / "run", "train.epochs=1", f"model.weights={weights}"), weights, digest


@pytest.fixture
def replaced(weights_run) -> Iterator[str]:
    """The run's weights file replaced by other weights (put back afterwards); the new sha256."""
    _, weights, _ = weights_run
    original = weights.read_bytes()
    yield write_backbone(weights, seed=5)
    weights.write_bytes(original)


def test_the_run_and_its_adapter_record_the_weights_sha256(weights_run) -> None:
    run, weights, digest = weights_run
    report = json.loads((run / "report.json").read_text())
    assert report["backbone"] == {"weights": str(weights), "sha256": digest, "hub": None}
    assert read_adapter_config(run / "adapter").backbone_sha256 == digest


def test_eval_on_a_replaced_weights_file_is_refused_in_one_line(weights_run, replaced, capsys) -> None:
    run, weights, digest = weights_run
    before = snapshot(run)
    assert main(["eval", str(run)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"medpeft eval: error: {run / 'adapter'} was trained on other backbone weights: {weights} has "
        f"sha256 {replaced}, the adapter records sha256 {digest}. Pass the checkpoint it was trained on "
        "with --weights, or --allow-other-weights (Python: allow_other_weights=True) to run it on these anyway"
    )
    assert snapshot(run) == before


def test_eval_with_the_override_warns_and_writes_into_evals(weights_run, replaced, capsys) -> None:
    run, _, _ = weights_run
    own = {name: (run / name).read_bytes() for name in ("test_metrics.json", "predictions_test.csv", "report.json")}
    with pytest.warns(UserWarning, match="runs on other backbone weights than it was trained on"):
        assert main(["eval", str(run), "--allow-other-weights"]) == 0
    folder = run / "evals" / "eval"
    assert f"results in {folder}" in capsys.readouterr().out
    assert json.loads((folder / "eval.json").read_text())["allow_other_weights"] is True
    assert {name: (run / name).read_bytes() for name in own} == own
    assert os.listdir(run / "evals") == ["eval"]


def test_resuming_onto_a_replaced_weights_file_is_refused_before_anything_is_rewritten(
    weights_run, replaced, image_argv, capsys
) -> None:
    run, weights, digest = weights_run
    before = snapshot(run)
    assert json.loads((run / "backbone_weights.json").read_text())["sha256"] == digest
    # continuing the run for a second epoch resumes it from its checkpoint
    assert main(image_argv(run, "train.epochs=2", f"model.weights={weights}")) == 2
    assert one_line(capsys.readouterr().err) == (
        f"medpeft train: error: {run}: the backbone weights changed since the run started: {weights} has "
        f"sha256 {replaced}, the run records sha256 {digest}; restore those weights to resume, or start "
        "over with --no-resume or a new output_dir"
    )
    assert snapshot(run) == before
