"""CSV and folder manifests: parsing, task inference, splits and errors that name the culprit."""

import csv
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from medpeft.data.manifest import (
    UNSPLIT,
    Sample,
    holdout_fractions,
    read_csv_manifest,
    read_csv_rows,
    read_image_folder,
    split_samples,
)
from medpeft.errors import ConfigError, DataError


def write_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(path)


def write_csv(folder, header, rows, images=True):
    """Write manifest.csv and (optionally) a PNG for every path in the first column."""
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    if images:
        for row in rows:
            write_png(folder / row[0])
    return path


def test_multiclass_with_split(tmp_path):
    rows = [["a.png", "tb", "train"], ["b.png", "normal", "Validation"], ["c.png", "tb", "test"]]
    manifest = read_csv_manifest(write_csv(tmp_path, ["image", "label", "split"], rows))
    assert manifest.task == "multiclass" and manifest.classes == ["normal", "tb"]
    assert sorted(manifest.splits) == ["test", "train", "val"]
    train, val = manifest.split("train"), manifest.split("val")
    assert train[0] == Sample(str(tmp_path / "a.png"), 1, f"{tmp_path / 'manifest.csv'} line 2")
    assert val[0].target == 0 and len(manifest.split("test")) == 1


def test_multilabel_by_separator_empty_is_normal_and_classes_order(tmp_path):
    rows = [["a.png", "mass|nodule"], ["b.png", ""], ["c.png", "nodule"]]
    manifest = read_csv_manifest(
        write_csv(tmp_path, ["image", "label"], rows), classes=["nodule", "mass", "edema"]
    )
    assert manifest.task == "multilabel" and list(manifest.splits) == [UNSPLIT]
    assert [s.target for s in manifest.split(UNSPLIT)] == [
        (1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0)
    ]


def test_label_columns_and_forced_task(tmp_path):
    rows = [["a.png", "1", "0"], ["b.png", "0", "0"]]
    path = write_csv(tmp_path, ["image", "mass", "nodule"], rows)
    manifest = read_csv_manifest(path, label_cols=["mass", "nodule"])
    assert manifest.classes == ["mass", "nodule"]
    assert [s.target for s in manifest.split(UNSPLIT)] == [(1.0, 0.0), (0.0, 0.0)]
    single = write_csv(tmp_path, ["image", "label"], [["a.png", "mass"], ["b.png", ""]])
    assert read_csv_manifest(single, task="multilabel").task == "multilabel"
    with pytest.raises(DataError, match="line 3 column 'label'.*task='multilabel'"):
        read_csv_manifest(single)


def test_missing_column_names_file_and_column(tmp_path):
    path = write_csv(tmp_path, ["image", "diagnosis"], [["a.png", "tb"]])
    with pytest.raises(DataError, match=r"manifest\.csv: missing column\(s\) \['label'\]"):
        read_csv_manifest(path)


def test_missing_images_are_listed_with_row_and_column(tmp_path):
    rows = [[f"img{i}.png", "tb"] for i in range(8)]
    path = write_csv(tmp_path, ["image", "label"], rows, images=False)
    write_png(tmp_path / "img0.png")
    with pytest.raises(DataError) as info:
        read_csv_manifest(path)
    message = str(info.value)
    assert "7 image file(s)" in message and "img1.png" in message
    assert "line 3 column 'image'" in message and "and 2 more" in message


def test_unknown_label_bad_split_bad_binary_and_empty(tmp_path):
    path = write_csv(tmp_path, ["image", "label"], [["a.png", "tb"], ["b.png", "covid"]])
    with pytest.raises(DataError, match=r"line 3 column 'label': unknown label\(s\) \['covid'\]"):
        read_csv_manifest(path, classes=["normal", "tb"])
    path = write_csv(tmp_path, ["image", "label", "split"], [["a.png", "tb", "holdout"]])
    with pytest.raises(DataError, match="line 2 column 'split': bad split value 'holdout'"):
        read_csv_manifest(path)
    path = write_csv(tmp_path, ["image", "mass"], [["a.png", "2"]])
    with pytest.raises(DataError, match="line 2 column 'mass': expected 0 or 1"):
        read_csv_manifest(path, label_cols=["mass"])
    path = write_csv(tmp_path, ["image", "label"], [])
    with pytest.raises(DataError, match="empty manifest"):
        read_csv_manifest(path)
    with pytest.raises(DataError, match="manifest not found"):
        read_csv_manifest(tmp_path / "nope.csv")


def test_root_overrides_csv_folder(tmp_path):
    write_png(tmp_path / "data" / "a.png")
    path = write_csv(tmp_path, ["image", "label"], [["a.png", "x"]], images=False)
    manifest = read_csv_manifest(path, root=tmp_path / "data")
    assert manifest.split(UNSPLIT)[0].path == str(tmp_path / "data" / "a.png")


def test_split_samples_is_seeded_and_stratified():
    samples = [Sample(f"{i}.png", int(i < 20)) for i in range(100)]  # 80 / 20
    parts = split_samples(samples, (0.7, 0.1, 0.2), seed=3)
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "val": 10, "test": 20}
    assert Counter(s.target for s in parts["test"]) == {0: 16, 1: 4}
    assert parts == split_samples(samples, (0.7, 0.1, 0.2), seed=3)
    assert parts != split_samples(samples, (0.7, 0.1, 0.2), seed=4)
    with pytest.raises(ConfigError):
        split_samples(samples, (0.5, 0.5))


def test_multilabel_split_stratifies_on_rarest_label():
    rare = [Sample(f"r{i}", (1.0, 1.0)) for i in range(10)]
    common = [Sample(f"c{i}", (1.0, 0.0)) for i in range(30)]
    normal = [Sample(f"n{i}", (0.0, 0.0)) for i in range(10)]
    test = split_samples(rare + common + normal, (0.8, 0.0, 0.2), seed=0)["test"]
    assert Counter(s.path[0] for s in test) == {"r": 2, "c": 6, "n": 2}


def test_with_splits(tmp_path):
    rows = [[f"{i}.png", "ab"[i % 2]] for i in range(10)]
    manifest = read_csv_manifest(write_csv(tmp_path, ["image", "label"], rows))
    split = manifest.with_splits((0.6, 0.2, 0.2), seed=0)
    assert sorted(split.splits) == ["test", "train", "val"]
    assert [len(split.split(n)) for n in ("train", "val", "test")] == [6, 2, 2]
    assert split.with_splits() is split
    with pytest.raises(DataError, match="no split 'train'"):
        manifest.split("train")


def test_image_folder_layouts(tmp_path):
    for name in ("b/1.png", "a/2.jpg", "a/sub/3.png", "a/.hidden.png"):
        write_png(tmp_path / "flat" / name)
    (tmp_path / "flat" / "a" / "notes.txt").write_text("not an image")
    manifest = read_image_folder(tmp_path / "flat")
    assert manifest.classes == ["a", "b"]
    assert [(s.path.split("flat/")[1], s.target) for s in manifest.split(UNSPLIT)] == [
        ("a/2.jpg", 0), ("a/sub/3.png", 0), ("b/1.png", 1)
    ]
    for name in ("train/x/1.png", "train/y/2.png", "val/y/3.png", "test/x/4.png"):
        write_png(tmp_path / "split" / name)
    manifest = read_image_folder(tmp_path / "split")
    assert manifest.classes == ["x", "y"]
    assert [len(manifest.split(n)) for n in ("train", "val", "test")] == [2, 1, 1]


def test_image_folder_errors(tmp_path):
    write_png(tmp_path / "mixed" / "train" / "x" / "1.png")
    write_png(tmp_path / "mixed" / "y" / "2.png")
    with pytest.raises(DataError, match="mixes split folders and class folders"):
        read_image_folder(tmp_path / "mixed")
    write_png(tmp_path / "stray" / "x" / "1.png")
    write_png(tmp_path / "stray" / "2.png")
    with pytest.raises(DataError, match=r"outside a class folder: \['2.png'\]"):
        read_image_folder(tmp_path / "stray")
    with pytest.raises(DataError, match=r"class folder\(s\) \['x'\] not in classes"):
        read_image_folder(tmp_path / "mixed" / "train", classes=["a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        read_image_folder(tmp_path / "empty")
    (tmp_path / "stray" / "2.png").unlink()
    (tmp_path / "stray" / "z").mkdir()
    with pytest.raises(DataError, match="z: class folder holds no image files"):
        read_image_folder(tmp_path / "stray")


def test_csv_rows_keep_true_line_numbers_and_reject_stray_cells(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('image, label ,note\na.png,x,"two\nlines"\n\nb.png,y\n')
    header, rows = read_csv_rows(path)
    assert header == ["image", "label", "note"]
    assert [(line, row["image"], row["note"]) for line, row in rows] == [
        (2, "a.png", "two\nlines"), (5, "b.png", "")  # a short row's absent cells read as ""
    ]
    path.write_text("image,label\na.png,x,\nb.png,lung, clear\n")  # an empty extra cell is fine
    with pytest.raises(DataError, match=r"m\.csv line 3: 1 cell\(s\) beyond the header's 2"):
        read_csv_rows(path)
    path.write_text("image,label,,label,\na.png,x,,y,\n")  # blank names may repeat
    with pytest.raises(DataError, match=r"m\.csv: column name\(s\) \['label'\] appear more than once"):
        read_csv_rows(path)


def test_holdout_fractions_name_the_config_keys():
    assert holdout_fractions(0.1, 0.2) == pytest.approx((0.7, 0.1, 0.2))
    assert holdout_fractions(0.7, 0.3)[0] == pytest.approx(0.0)
    assert holdout_fractions(0.8, 0.2)[0] == 0.0  # 1 - 0.8 - 0.2 is -5.6e-17 in floats
    for val, test in ((0.6, 0.6), (-0.1, 0.2)):
        with pytest.raises(ConfigError, match="data.val_fraction, data.test_fraction"):
            holdout_fractions(val, test)
