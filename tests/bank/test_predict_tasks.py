"""``medpeft predict`` with several ``--adapter``: one CSV with a task column, mixed-task batches."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from medpeft.bank import AdapterBank
from medpeft.cli import main
from medpeft.errors import DataError
from medpeft.runs.predict import predict_tasks


def _write_images(folder, n=3):
    folder.mkdir()
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_manifest_with_task_column_matches_the_bank(bank_dir, tmp_path):
    paths = _write_images(tmp_path / "images")
    manifest = tmp_path / "inputs.csv"
    manifest.write_text(
        "id,task,image\n"
        f"a,tb,images/{paths[0].name}\nb,chest,images/{paths[1].name}\nc,blood,images/{paths[2].name}\n"
    )
    out = tmp_path / "preds.csv"
    argv = ["predict", "--adapter", f"tb={bank_dir / 'tb'}", "--adapter", str(bank_dir / "chest"),
            "--adapter", f"blood={bank_dir / 'blood'}", "--manifest", str(manifest),
            "--output", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["task"]) for r in rows] == [("a", "tb"), ("b", "chest"), ("c", "blood")]
    bank = AdapterBank.from_directory(bank_dir)
    for row, path in zip(rows, paths):
        expected = bank.predict([row["task"]], [bank.preprocess(row["task"], {"image": path})])[0]
        pairs = dict(pair.split("=") for pair in row["scores"].split(";"))
        assert list(pairs) == bank.task(row["task"]).labels
        assert [float(v) for v in pairs.values()] == pytest.approx(expected.tolist(), abs=1e-4)
    assert rows[0]["prediction"] in bank.task("tb").labels


def test_image_files_go_through_every_task_and_unknown_tasks_are_named(bank_dir, tmp_path):
    paths = _write_images(tmp_path / "images", 2)
    adapters = {"tb": bank_dir / "tb", "chest": bank_dir / "chest"}
    predictions = predict_tasks(adapters, [str(p) for p in paths], device="cpu", batch_size=3)
    assert predictions.tasks == ["tb", "chest", "tb", "chest"]
    assert [len(s) for s in predictions.scores] == [3, 4, 3, 4]
    manifest = tmp_path / "bad.csv"
    manifest.write_text(f"task,image\ntbb,images/{paths[0].name}\n")
    with pytest.raises(DataError, match=r"bad.csv line 2: task 'tbb'; did you mean 'tb'"):
        predict_tasks(adapters, manifest=manifest, device="cpu")


def test_an_unreadable_file_fails_alone_in_every_task(bank_dir, tmp_path, capsys):
    paths = _write_images(tmp_path / "images", 2)
    (tmp_path / "images" / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "preds.csv"
    argv = ["predict", "--adapter", str(bank_dir / "tb"), "--adapter", str(bank_dir / "chest"),
            str(tmp_path / "images"), "--output", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 1
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["task"], r["status"]) for r in rows] == [
        (str(paths[0]), "tb", "ok"), (str(paths[0]), "chest", "ok"),
        (str(paths[1]), "tb", "error"), (str(paths[1]), "chest", "error"),
    ]
    bank = AdapterBank.from_directory(bank_dir)
    expected = bank.predict(["tb"], [bank.preprocess("tb", {"image": paths[0]})])[0]
    assert [float(v.split("=")[1]) for v in rows[0]["scores"].split(";")] == pytest.approx(expected.tolist(), abs=1e-4)
    assert rows[2]["scores"] == rows[2]["prediction"] == ""
    assert "modality 'image': cannot read image" in rows[2]["error"] and "img1.png" in rows[2]["error"]
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medpeft predict:")]
    assert len(summary) == 1 and summary[0].startswith("medpeft predict: 2 of 4 sample(s) could not be read")


def test_several_tasks_on_an_int8_backbone_score_as_its_bank(bank_dir, tmp_path):
    paths = [str(p) for p in _write_images(tmp_path / "images", n=2)]
    adapters = {name: bank_dir / name for name in ("tb", "blood")}

    int8 = predict_tasks(adapters, paths, device="cpu", frozen_dtype=torch.int8)
    fp32 = predict_tasks(adapters, paths, device="cpu")

    bank = AdapterBank.from_directory(bank_dir, frozen_dtype=torch.int8)
    for task, sample, scores in zip(int8.tasks, int8.ids, int8.scores):
        expected = bank.predict([task], [bank.preprocess(task, {"image": sample})])[0]
        assert scores == pytest.approx(expected.tolist(), abs=1e-3)  # bf16 kernels may round by batch shape
    assert int8.scores != fp32.scores
    assert all(a == pytest.approx(b, abs=0.06) for a, b in zip(int8.scores, fp32.scores))
