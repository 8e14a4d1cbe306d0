"""``medpeft init DATA`` and ``medpeft train DATA``: own data in, a starter config and a run out."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from medpeft.cli import main
from medpeft.config import load_config
from medpeft.run_layout import RunLayout
from medpeft.runs.data import load_source
from medpeft.runs.lock import LOCK
from tests.runs.conftest import TINY_IMAGE, one_line

TINY = [*TINY_IMAGE, "train.epochs=1"]


def image_folder(root: Path, splits: dict[str, int], classes=("normal", "tb")) -> Path:
    """``root/<split>/<class>/<i>.png`` (split "": no split folder), ``n`` images per class."""
    rng = np.random.default_rng(0)
    for split, n in splits.items():
        for value, label in zip((40, 200), classes):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(rng.normal(value, 30, (32, 32, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_train_on_a_train_test_folder_carves_val_and_names_the_layout(tmp_path, monkeypatch, capsys):
    data = image_folder(tmp_path / "kag", {"train": 12, "test": 4})
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(data), *TINY, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"{data}: folder train/<class>/ + test/<class>/, 32 images, 2 classes (multiclass)" in out
    assert "no config given: training with a starter config for folder train/<class>/ + test/<class>/" in out
    assert f"data: folder {data} (<split>/<class>/ folders) has train and test only; carved val from train " \
        "(val 10% of each class, seed 0)" in err
    assert "data: 32 samples (train 22, val 2, test 8)" in err
    run = tmp_path / "runs" / "kag"  # named after the folder
    assert (run / "report.json").is_file() and not (run / LOCK).exists()


def test_init_on_a_csv_writes_a_config_train_accepts_and_name_sets_the_run_folder(tmp_path, monkeypatch, capsys):
    data = image_folder(tmp_path / "images", {"": 8})
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "diagnosis", "patient_id"])
        for path in sorted(data.rglob("*.png")):
            writer.writerow([path.relative_to(tmp_path).as_posix(), path.parent.name, f"{path.parent.name}{path.stem}"])
    monkeypatch.chdir(tmp_path)
    assert main(["init", str(manifest), "--out", "cfg/my_task.yaml"]) == 0
    out = capsys.readouterr().out
    assert "labels.csv: CSV manifest, no split column, 16 images, 2 classes (multiclass)" in out
    assert "patient-like column 'patient_id'" in out and "wrote cfg/my_task.yaml" in out
    text = (tmp_path / "cfg" / "my_task.yaml").read_text()
    for line in ("image_col: filename", "label_col: diagnosis", "group_col: patient_id",
                 'positive_class: "tb"', 'classes: ["normal", "tb"]', "weights: null", "name: labels"):
        assert line in text
    assert "OFFLINE?" in text and "model.weights=" in text
    assert main(["train", "cfg/my_task.yaml", "name=foo", *TINY, "data.val_fraction=0.25", "--quiet"]) == 0
    assert (tmp_path / "runs" / "foo" / "report.json").is_file()
    assert main(["init", str(manifest), "--out", "cfg/my_task.yaml"]) == 2
    assert one_line(capsys.readouterr().err).endswith(
        "cfg/my_task.yaml: already exists; give another --out or delete it")


def test_init_on_a_train_only_folder_reports_duplicates_and_imbalance_and_carves_val_and_test(tmp_path, capsys):
    data = image_folder(tmp_path / "only", {"train": 10})
    for i in range(10, 60):  # 60 tb vs 10 normal
        pixels = np.full((32, 32, 3), i, dtype=np.uint8)
        Image.fromarray(pixels).save(data / "train" / "tb" / f"{i}.png")
    shutil.copy(data / "train" / "normal" / "0.png", data / "train" / "normal" / "copy.png")
    assert main(["init", str(data), "--out", str(tmp_path / "only.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"{data}: folder train/<class>/, 71 images" in out
    assert "  normal                      11" in out and "  tb                          60" in out
    assert (f"warning: 1 suspected duplicate(s) (byte-identical files), e.g. {data}/train/normal/0.png = "
            f"{data}/train/normal/copy.png") in out
    assert "warning: classes are imbalanced (60 vs 11 images)" in out
    config = load_config(tmp_path / "only.yaml", [*TINY, "data.leakage=warn"])
    assert config.output_dir == "runs/only" and config.data.root == str(data)
    source = load_source(config, RunLayout.at(tmp_path / "run"))
    assert all(source.split(s) for s in ("train", "val", "test"))


def test_init_on_something_else_says_what_it_expects(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("x")
    assert main(["init", str(tmp_path / "notes.md"), "--out", str(tmp_path / "x.yaml")]) == 2
    assert one_line(capsys.readouterr().err).endswith(
        f"{tmp_path / 'notes.md'}: expected an image folder or a CSV manifest")
    assert not (tmp_path / "x.yaml").exists()


def test_init_names_the_columns_it_could_not_find(tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,dx\na.png,tb\n")
    assert main(["init", str(manifest), "--out", str(tmp_path / "x.yaml")]) == 2
    assert one_line(capsys.readouterr().err).endswith(
        f"{manifest}: found no label column among ['file', 'dx']; expected an image column (image, path, file...) "
        "and a label column (label, labels, class...)")


def test_init_names_patient_sub_folders_inside_class_folders(tmp_path, capsys):
    data = image_folder(tmp_path / "nested", {"p1": 2, "p2": 2})  # p*/<class>/ ...
    for patient in ("p1", "p2"):  # ... moved to <class>/<patient>/
        for label in ("normal", "tb"):
            shutil.move(data / patient / label, tmp_path / "moved" / label / patient)
    assert main(["init", str(tmp_path / "moved"), "--out", str(tmp_path / "x.yaml")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'moved'}: folder <class>/, 8 images, 2 classes" in out
    assert "images lie in sub-folders of their class folders (one per patient?)" in out
