"""``medpeft predict`` / ``medpeft.runs.predict``: image files or a manifest, any method."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from medpeft.cli import main
from medpeft.run_layout import ADAPTER_DIR, SYNTHETIC_DIR
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
    assert header == ["id", "lesion", "normal", "prediction", "status", "error"]
    assert len(rows) == 3 and [row["id"] for row in rows] == [str(p) for p in images]
    for row in rows:
        assert float(row["lesion"]) + float(row["normal"]) == pytest.approx(1.0, abs=1e-3)
        assert row["prediction"] in ("lesion", "normal") and (row["status"], row["error"]) == ("ok", "")


def test_predict_files_python_api(image_run, image_manifest):
    images = [str(p) for p in _images(image_manifest, 2)]
    predictions = predict_files(image_run / ADAPTER_DIR, images, device="cpu")
    assert isinstance(predictions, Predictions) and predictions.task == "multiclass"
    assert predictions.ids == images and predictions.labels == ["lesion", "normal"]
    assert all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in predictions.scores)
    out = io.StringIO()
    predictions.write_csv(out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "id,lesion,normal,prediction,status,error" and len(lines) == 3


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
    assert header == ["id", *labels, "prediction", "status", "error"]
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


def test_a_folder_of_good_and_bad_files_gives_the_good_ones_scores_and_exit_1(image_run, image_manifest, tmp_path, capsys):
    good = _images(image_manifest, 2)
    folder = tmp_path / "inputs"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(good[0], folder / "a.png")
    shutil.copy(good[1], folder / "sub" / "b.png")
    (folder / "sub" / "corrupt.png").write_bytes(good[0].read_bytes()[:60])
    np.save(folder / "nan.npy", np.full((32, 32), np.nan))
    (folder / "notes.txt").write_text("no image extension: not an input")
    out = tmp_path / "preds.csv"
    argv = ["predict", str(image_run / ADAPTER_DIR), str(folder), "--output", str(out), "--quiet"]
    assert main(argv) == 1
    header, rows = _rows(out)
    assert header == ["id", "lesion", "normal", "prediction", "status", "error"]
    by_name = {Path(row["id"]).name: row for row in rows}
    assert list(by_name) == ["a.png", "nan.npy", "b.png", "corrupt.png"]  # sorted paths, recursively
    alone = predict_files(image_run / ADAPTER_DIR, [str(folder / "a.png"), str(folder / "sub" / "b.png")])
    for name, expected in zip(["a.png", "b.png"], alone.scores):
        row = by_name[name]
        assert (row["status"], row["error"]) == ("ok", "")
        assert [float(row["lesion"]), float(row["normal"])] == pytest.approx(expected, abs=1e-4)
    corrupt, nan = by_name["corrupt.png"], by_name["nan.npy"]
    assert (corrupt["status"], corrupt["lesion"], corrupt["prediction"]) == ("error", "", "")
    assert "cannot read image" in corrupt["error"] and "corrupt.png" in corrupt["error"]
    assert nan["status"] == "error" and "nan.npy: 1024 of 1024 pixels are NaN or infinite" in nan["error"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("medpeft predict: 2 of 4 sample(s) could not be read (status 'error' in the output, "
                          "with the reason; first: ")


def test_a_folder_without_images_is_named(image_run, tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["predict", str(image_run / ADAPTER_DIR), str(tmp_path / "empty"), "--quiet"]) == 2
    assert "empty: no image files in the folder or below (expected .png, " in capsys.readouterr().err


def test_predictions_csv_escapes_ids_a_spreadsheet_would_evaluate(image_run, image_manifest, tmp_path):
    manifest = tmp_path / "inputs.csv"
    manifest.write_text('id,image\n"=HYPERLINK(""http://x"",""y"")",images/00000.png\n-1,images/00001.png\n')
    out = tmp_path / "preds.csv"
    argv = ["predict", str(image_run / ADAPTER_DIR), "--manifest", str(manifest), "--root", str(image_manifest.parent),
            "--output", str(out), "--quiet"]
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    assert lines[1].startswith('"\'=HYPERLINK(""http://x"",""y"")",0.') and lines[2].startswith("-1,0.")
    _, rows = _rows(out)
    assert [row["id"] for row in rows] == ["'=HYPERLINK(\"http://x\",\"y\")", "-1"]
