"""``medpeft predict`` / ``medpeft.runs.predict``: image files or a manifest, any method."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from medpeft.cli import main
from medpeft.runs.layout import ADAPTER_DIR, SYNTHETIC_DIR
from medpeft.runs.predict import Predictions, predict_files, predict_manifest


def _images(manifest: Path, n: int = 3) -> list[Path]:
    return sorted((manifest.parent / "images").glob("*.png"))[:n]


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path) as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_predict_image_files_writes_csv(image_run, image_manifest, tmp_path):
    images = _images(image_manifest)
    out_csv = tmp_path / "preds.csv"
    argv = ["predict", str(image_run / ADAPTER_DIR), *map(str, images), "--output", str(out_csv)]
    assert main(argv) == 0
    header, rows = _rows(out_csv)
    assert header == ["id", "lesion", "normal", "prediction"]
    assert len(rows) == 3 and [row["id"] for row in rows] == [str(p) for p in images]
    for row in rows:
        assert float(row["lesion"]) + float(row["normal"]) == pytest.approx(1.0, abs=1e-3)
        assert row["prediction"] in ("lesion", "normal")


def test_predict_files_python_api(image_run, image_manifest):
    images = [str(p) for p in _images(image_manifest, 2)]
    predictions = predict_files(image_run / ADAPTER_DIR, images, device="cpu")
    assert isinstance(predictions, Predictions) and predictions.task == "multiclass"
    assert predictions.ids == images and predictions.labels == ["lesion", "normal"]
    assert all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in predictions.scores)
    out = io.StringIO()
    predictions.write_csv(out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "id,lesion,normal,prediction" and len(lines) == 3


def test_adapter_remembers_its_backbone_weights(tmp_path, train_image, image_manifest, capsys):
    from safetensors.torch import save_file

    from medpeft.backbones import build_vit

    backbone = build_vit("vit_tiny_patch16_224", 2, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    weights = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(weights))
    run = train_image(tmp_path / "run", "train.epochs=1", f"model.weights={weights}")
    image = str(_images(image_manifest, 1)[0])
    capsys.readouterr()
    assert main(["predict", str(run / ADAPTER_DIR), image]) == 0
    recorded = capsys.readouterr().out
    assert main(["predict", str(run / ADAPTER_DIR), image, "--weights", str(weights)]) == 0
    assert capsys.readouterr().out == recorded  # the recorded checkpoint was used
    weights.rename(tmp_path / "moved.safetensors")
    assert main(["predict", str(run / ADAPTER_DIR), image]) == 2
    err = capsys.readouterr().err
    assert "backbone.safetensors" in err and "--weights" in err


def _two_modality_manifest(path: Path) -> Path:
    """Rows ``both`` (a + b), ``a_only`` (b empty) of the same sample, ``b_only`` (a empty)."""
    path.write_text(
        "id,a,b\n"
        "both,a/00000.png,b/00000.png\n"
        "a_only,a/00000.png,\n"
        "b_only,,b/00001.png\n"
    )
    return path


def test_predict_mora_manifest_with_a_missing_modality(mora_run, tmp_path):
    manifest = _two_modality_manifest(tmp_path / "inputs.csv")
    out_csv = tmp_path / "preds.csv"
    argv = ["predict", str(mora_run / ADAPTER_DIR), "--manifest", str(manifest),
            "--root", str(mora_run / SYNTHETIC_DIR), "--device", "cpu", "--output", str(out_csv),
            "--quiet"]
    assert main(argv) == 0
    header, rows = _rows(out_csv)
    labels = ["c0", "c1", "c2", "c3"]
    assert header == ["id", *labels, "prediction"]
    assert [row["id"] for row in rows] == ["both", "a_only", "b_only"]
    for row in rows:
        assert sum(float(row[label]) for label in labels) == pytest.approx(1.0, abs=1e-3)
        assert row["prediction"] in labels
    # the same sample without modality b is read as missing, not as its image
    assert [rows[0][label] for label in labels] != [rows[1][label] for label in labels]


def test_predict_manifest_python_api(mora_run, tmp_path):
    manifest = _two_modality_manifest(tmp_path / "inputs.csv")
    predictions = predict_manifest(
        mora_run / ADAPTER_DIR, manifest, root=mora_run / SYNTHETIC_DIR, device="cpu"
    )
    assert predictions.ids == ["both", "a_only", "b_only"]
    assert predictions.labels == ["c0", "c1", "c2", "c3"] and len(predictions.scores) == 3


def test_image_files_for_a_two_modality_adapter_ask_for_a_manifest(mora_run, image_manifest, capsys):
    image = str(_images(image_manifest, 1)[0])
    assert main(["predict", str(mora_run / ADAPTER_DIR), image]) == 2
    err = capsys.readouterr().err
    assert "--manifest" in err and "Traceback" not in err
