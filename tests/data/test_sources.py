"""CSV manifests (single-image and multimodal), image folders, the recipe registry and the
synthetic source: parsing, task inference, splits and errors that name the culprit."""

import csv
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from medpeft.data.sources import (
    RECIPES,
    csv_source,
    folder_source,
    read_inputs,
    recipe_source,
    synthetic_source,
)
from medpeft.data.splits import assign_splits
from medpeft.errors import ConfigError, DataError

KINDS = {"fundus": "image", "oct": "image", "note": "text"}


def write_png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, dtype=np.uint8)).save(path)


def write_csv(folder, header, rows, images=True):
    """Write manifest.csv and (optionally) a PNG for every path in the first column."""
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    if images:
        for row in rows:
            write_png(folder / row[0])
    return path


def write_manifest(folder, rows, columns=("id", "fundus", "oct", "note", "label", "split")):
    return write_csv(folder, columns, rows, images=False)


@pytest.fixture
def manifest(tmp_path):
    for name, value in [("f0.png", 10), ("f1.png", 200), ("o0.png", 50), ("o1.png", 90)]:
        write_png(tmp_path / name, value)
    rows = [
        ["s0", "f0.png", "o0.png|o1.png", "dry drusen", "dry", "train"],
        ["s1", "", "o1.png|o0.png", "wet fluid", "wet", "train"],
        ["s2", "f1.png", "o0.png|o0.png", "", "dry", "test"],
    ]
    return write_manifest(tmp_path, rows)


# single-image form


def test_single_image_csv_is_the_one_modality_case(tmp_path):
    rows = [["a.png", "tb", "train"], ["b.png", "normal", "Validation"], ["c.png", "tb", "test"]]
    source = csv_source(write_csv(tmp_path, ["image", "label", "split"], rows))
    assert source.modalities == ("image",) and source.kinds == {"image": "image"}
    assert source.task == "multiclass" and source.labels == ["normal", "tb"]
    first = source.split("train")[0]
    assert first.values == {"image": (str(tmp_path / "a.png"),)} and first.target == 1
    assert first.id == "0" and first.where == f"{tmp_path / 'manifest.csv'} line 2"
    assert source.targets("val") == [0] and source.ids("test") == ["2"]


def test_single_image_csv_with_stratified_splits(tmp_path):
    rows = [[f"{i}.png", "tb" if i < 8 else "normal"] for i in range(40)]  # 8 tb / 32 normal
    source = csv_source(write_csv(tmp_path, ["image", "label"], rows))
    assert all(r.split is None for r in source.records)
    split = assign_splits(source, val_fraction=0.25, test_fraction=0.25, seed=0)
    sizes = {n: Counter(split.targets(n)) for n in ("train", "val", "test")}
    assert sizes == {"train": {0: 16, 1: 4}, "val": {0: 8, 1: 2}, "test": {0: 8, 1: 2}}


def test_multilabel_by_separator_empty_is_normal_and_classes_order(tmp_path):
    rows = [["a.png", "mass|nodule"], ["b.png", ""], ["c.png", "nodule"]]
    source = csv_source(
        write_csv(tmp_path, ["image", "label"], rows), classes=["nodule", "mass", "edema"]
    )
    assert source.task == "multilabel" and source.split(None) == source.records
    assert [r.target for r in source.records] == [(1.0, 1.0, 0.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0)]


def test_label_columns_and_forced_task(tmp_path):
    rows = [["a.png", "1", "0"], ["b.png", "0", "0"]]
    path = write_csv(tmp_path, ["image", "mass", "nodule"], rows)
    source = csv_source(path, label_cols=["mass", "nodule"])
    assert source.labels == ["mass", "nodule"] and source.task == "multilabel"
    assert [r.target for r in source.records] == [(1.0, 0.0), (0.0, 0.0)]
    with pytest.raises(ConfigError, match="multilabel"):
        csv_source(path, label_cols=["mass", "nodule"], task="multiclass")
    with pytest.raises(ConfigError, match="differ from label_cols"):
        csv_source(path, label_cols=["mass", "nodule"], classes=["nodule", "mass"])
    single = write_csv(tmp_path, ["image", "label"], [["a.png", "mass"], ["b.png", ""]])
    assert csv_source(single, task="multilabel").task == "multilabel"
    with pytest.raises(DataError, match="line 3 column 'label'.*task='multilabel'"):
        csv_source(single)


def test_custom_columns_ids_and_root(tmp_path):
    write_png(tmp_path / "data" / "a.png")
    path = write_csv(tmp_path, ["file", "dx", "id", "fold"], [["a.png", "x", "p7", "test"]], False)
    source = csv_source(path, image_col="file", label_col="dx", split_col=None, root=tmp_path / "data")
    record = source.records[0]
    assert record.values["image"] == (str(tmp_path / "data" / "a.png"),)
    assert record.id == "p7" and record.split is None
    assert csv_source(path, image_col="file", label_col="dx", id_col=None, split_col="fold",
                      root=tmp_path / "data").records[0].id == "0"


def test_missing_column_names_file_and_column(tmp_path):
    path = write_csv(tmp_path, ["image", "diagnosis"], [["a.png", "tb"]])
    with pytest.raises(DataError, match=r"manifest\.csv: missing column\(s\) \['label'\]"):
        csv_source(path)


def test_missing_images_are_listed_with_row_and_column(tmp_path):
    rows = [[f"img{i}.png", "tb"] for i in range(8)]
    path = write_csv(tmp_path, ["image", "label"], rows, images=False)
    write_png(tmp_path / "img0.png")
    with pytest.raises(DataError) as info:
        csv_source(path)
    message = str(info.value)
    assert "7 image file(s)" in message and "img1.png" in message
    assert "line 3 column 'image'" in message and "and 2 more" in message


def test_unknown_label_bad_split_bad_binary_and_empty(tmp_path):
    path = write_csv(tmp_path, ["image", "label"], [["a.png", "tb"], ["b.png", "covid"]])
    with pytest.raises(DataError, match=r"line 3 column 'label': unknown label\(s\) \['covid'\]"):
        csv_source(path, classes=["normal", "tb"])
    path = write_csv(tmp_path, ["image", "label", "split"], [["a.png", "tb", "holdout"]])
    with pytest.raises(DataError, match="line 2 column 'split': bad split value 'holdout'"):
        csv_source(path)
    path = write_csv(tmp_path, ["image", "mass"], [["a.png", "2"]])
    with pytest.raises(DataError, match="line 2 column 'mass': expected 0 or 1"):
        csv_source(path, label_cols=["mass"])
    path = write_csv(tmp_path, ["image", "label"], [["", "tb"]], images=False)
    with pytest.raises(DataError, match="line 2: sample '0' has no modality"):
        csv_source(path)
    path = write_csv(tmp_path, ["image", "label"], [])
    with pytest.raises(DataError, match="empty manifest"):
        csv_source(path)
    with pytest.raises(DataError, match="manifest not found"):
        csv_source(tmp_path / "nope.csv")


# multimodal form


def test_multimodal_manifest_records(manifest):
    source = csv_source(manifest, modalities=KINDS)
    assert source.modalities == ("fundus", "oct", "note") and source.kinds == KINDS
    assert [r.id for r in source.records] == ["s0", "s1", "s2"]  # no row dropped
    assert source.labels == ["dry", "wet"] and source.task == "multiclass"
    assert [r.target for r in source.records] == [0, 1, 0]
    assert source.records[1].values["fundus"] == ()
    assert len(source.records[0].values["oct"]) == 2 and source.records[0].values["note"] == "dry drusen"
    assert source.ids("test") == ["s2"] and source.split("test")[0].id == "s2"
    assert csv_source(manifest, modalities=KINDS, combine={"oct": "hconcat"}).combine == {"oct": "hconcat"}


def test_multilabel_columns_and_joined_names(tmp_path):
    write_png(tmp_path / "a.png", 5)
    write_png(tmp_path / "b.png", 6)
    rows = [["0", "a.png", "1", "0"], ["1", "b.png", "0", "1"]]
    path = write_manifest(tmp_path, rows, ("id", "fundus", "x", "y"))
    source = csv_source(path, modalities={"fundus": "image"}, label_cols=["x", "y"])
    assert source.labels == ["x", "y"] and source.records[1].target == (0.0, 1.0)
    path = write_manifest(
        tmp_path, [["0", "a.png", "y|x"], ["1", "b.png", ""]], ("id", "fundus", "labels")
    )
    source = csv_source(path, modalities={"fundus": "image"}, label_col="labels", task="multilabel")
    assert [r.target for r in source.records] == [(1.0, 1.0), (0.0, 0.0)]


def test_multimodal_errors_name_the_culprit(tmp_path, manifest):
    tmp_path = tmp_path / "bad"
    tmp_path.mkdir()
    write_png(tmp_path / "a.png", 5)
    with pytest.raises(DataError, match=r"line 2 column 'fundus'.*gone\.png"):
        csv_source(write_manifest(tmp_path, [["0", "gone.png", "", "", "dry", ""]]), modalities=KINDS)
    with pytest.raises(DataError, match=r"line 3 column 'label'.*'sick'"):
        rows = [["0", "a.png", "", "", "dry", ""], ["1", "a.png", "", "", "sick", ""]]
        csv_source(write_manifest(tmp_path, rows), modalities=KINDS, classes=["dry", "wet"])
    with pytest.raises(DataError, match=r"line 2 column 'y'.*'2'"):
        path = write_manifest(tmp_path, [["0", "a.png", "1", "2"]], ("id", "fundus", "x", "y"))
        csv_source(path, modalities={"fundus": "image"}, label_cols=["x", "y"])
    with pytest.raises(DataError, match=r"missing column\(s\) \['mri'\]"):
        csv_source(manifest, modalities={"mri": "image"})
    with pytest.raises(DataError, match="line 2.*no modality"):
        csv_source(write_manifest(tmp_path, [["0", "", "", " ", "dry", ""]]), modalities=KINDS)
    with pytest.raises(DataError, match="line 3: duplicate sample id '0'"):
        csv_source(write_manifest(tmp_path, [["0", "a.png", "", "", "dry", ""]] * 2), modalities=KINDS)
    with pytest.raises(ConfigError, match="at most one text"):
        csv_source(manifest, modalities={"fundus": "text", "note": "text"})


def test_every_missing_image_listed_and_lines_count_multiline_text(tmp_path):
    write_png(tmp_path / "a.png", 5)
    rows = [
        ["0", "a.png", "gone1.png", "dry\ndrusen", "dry", "train"],
        ["1", "gone2.png", "a.png", "", "dry", "train"],
    ]
    with pytest.raises(DataError) as info:
        csv_source(write_manifest(tmp_path, rows), modalities=KINDS)
    message = str(info.value)
    assert "2 image file(s)" in message
    assert "line 2 column 'oct'" in message and "gone1.png" in message
    assert "line 4 column 'fundus'" in message and "gone2.png" in message  # row 2 spans lines 2-3
    rows = [["0", "a.png", "", "", "dry", "later"]]
    with pytest.raises(DataError, match="line 2 column 'split': bad split value 'later'"):
        csv_source(write_manifest(tmp_path, rows), modalities=KINDS)


def test_read_inputs_reads_modality_columns_unlabelled(manifest, tmp_path):
    records = read_inputs(manifest, KINDS)
    assert [r.id for r in records] == ["s0", "s1", "s2"] and {r.target for r in records} == {0}
    assert records[1].values["fundus"] == () and records[0].values["note"] == "dry drusen"
    no_ids = read_inputs(manifest, KINDS, id_col=None)  # ids: the first image path of the row
    assert [r.id for r in no_ids] == [str(tmp_path / n) for n in ("f0.png", "o1.png", "f1.png")]
    (tmp_path / "text.csv").write_text("note\nhello\n")
    assert read_inputs(tmp_path / "text.csv", {"note": "text"})[0].id == "0"  # no image: row number
    with pytest.raises(DataError, match="line 3: sample 's1' has no modality"):
        read_inputs(manifest, {"fundus": "image"})
    with pytest.raises(DataError, match=r"missing column\(s\) \['mri'\]"):
        read_inputs(manifest, {"mri": "image"})


# image folders


def test_image_folder_layouts(tmp_path):
    for name in ("b/1.png", "a/2.jpg", "a/sub/3.png", "a/.hidden.png"):
        write_png(tmp_path / "flat" / name)
    (tmp_path / "flat" / "a" / "notes.txt").write_text("not an image")
    source = folder_source(tmp_path / "flat")
    assert source.labels == ["a", "b"] and source.modalities == ("image",)
    assert [(r.id, r.values["image"][0].split("flat/")[1], r.target, r.split) for r in source.records] == [
        ("a/2.jpg", "a/2.jpg", 0, None), ("a/sub/3.png", "a/sub/3.png", 0, None),
        ("b/1.png", "b/1.png", 1, None),
    ]
    for name in ("train/x/1.png", "train/y/2.png", "val/y/3.png", "test/x/4.png"):
        write_png(tmp_path / "split" / name)
    source = folder_source(tmp_path / "split")
    assert source.labels == ["x", "y"]
    assert [len(source.split(n)) for n in ("train", "val", "test")] == [2, 1, 1]


def test_image_folder_errors(tmp_path):
    write_png(tmp_path / "mixed" / "train" / "x" / "1.png")
    write_png(tmp_path / "mixed" / "y" / "2.png")
    with pytest.raises(DataError, match="mixes split folders and class folders"):
        folder_source(tmp_path / "mixed")
    write_png(tmp_path / "stray" / "x" / "1.png")
    write_png(tmp_path / "stray" / "2.png")
    with pytest.raises(DataError, match=r"outside a class folder: \['2.png'\]"):
        folder_source(tmp_path / "stray")
    with pytest.raises(DataError, match=r"class folder\(s\) \['x'\] not in classes"):
        folder_source(tmp_path / "mixed" / "train", classes=["a"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        folder_source(tmp_path / "empty")
    (tmp_path / "stray" / "2.png").unlink()
    (tmp_path / "stray" / "z").mkdir()
    with pytest.raises(DataError, match="z: class folder holds no image files"):
        folder_source(tmp_path / "stray")
    with pytest.raises(DataError, match="image folder not found"):
        folder_source(tmp_path / "nope")


# recipes and the synthetic task


def test_recipe_registry():
    assert sorted(RECIPES) == [
        "blood_cells", "chestxray14", "derm7pt", "inbreast", "iu_xray", "mmc_amd", "mrnet", "odir",
        "shenzhen",
    ]
    with pytest.raises(ConfigError, match="unknown dataset recipe 'odir5k'"):
        recipe_source("odir5k", ".")


def test_recipe_source_reads_odir(tmp_path, make_odir):
    source = recipe_source("odir", make_odir(tmp_path), seed=0)
    assert source.modalities == ("image", "text") and len(source.records) == 3


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_synthetic_source_reads_back_the_written_task(tmp_path, task):
    kinds = {"img": "image", "txt": "text"}
    source = synthetic_source(tmp_path, kinds, 20, bits_per_modality=1, task=task, img_size=16)
    assert source.modalities == ("img", "txt") and source.kinds == kinds and source.task == task
    assert source.labels == (["c0", "c1", "c2", "c3"] if task == "multiclass" else ["img_0", "txt_0"])
    assert len(source.records) == 20 and {r.split for r in source.records} == {"train", "val", "test"}
    assert (tmp_path / "manifest.csv").is_file() and source.records[0].values["txt"].startswith("sig0")


def test_duplicated_rows_are_kept_once_and_end_in_one_split(tmp_path, caplog):
    for i in range(6):
        Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    rows = [f"{i}.png,{'a' if i % 2 else 'b'}" for i in range(6)]
    rows += ["1.png,a", "1.png,a", "4.png,b"]  # repeats of rows 2 and 5
    (tmp_path / "m.csv").write_text("image,label\n" + "\n".join(rows) + "\n")
    with caplog.at_level("WARNING"):
        source = csv_source(tmp_path / "m.csv")
    assert len(source.records) == 6
    assert "3 duplicated row(s) dropped" in caplog.text and "line 8 (= " in caplog.text
    split = assign_splits(source, 0.34, 0.34, seed=0)
    paths = [r.values["image"] for r in split.records]
    assert len(paths) == len(set(paths)) == 6


@pytest.mark.parametrize(("repeat", "what"), [("1.png,b,", "label"), ("1.png,a,test", "split")])
def test_contradictory_repeats_are_an_error(tmp_path, repeat, what):
    for i in range(2):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
    (tmp_path / "m.csv").write_text(f"image,label,split\n0.png,b,train\n1.png,a,\n{repeat}\n")
    with pytest.raises(DataError, match=f"line 4: the same inputs as .* line 3 with another {what}"):
        csv_source(tmp_path / "m.csv")


# one image, one identity


@pytest.mark.parametrize(
    ("header", "second"),
    [
        ("image,label", "imgs/../imgs/x.png,tb"),
        ("image,label", "{root}/imgs/x.png,tb"),
        ("id,image,label", "p2,imgs/x.png,tb"),  # under another id
    ],
)
def test_the_same_file_by_another_path_or_id_with_another_label_is_an_error(tmp_path, header, second):
    write_png(tmp_path / "imgs" / "x.png")
    write_png(tmp_path / "imgs" / "y.png", 9)
    first = "p1,imgs/x.png,normal" if header.startswith("id") else "imgs/x.png,normal"
    other = "p3,imgs/y.png,tb" if header.startswith("id") else "imgs/y.png,tb"
    rows = [first, other, second.format(root=tmp_path)]
    (tmp_path / "m.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    real = tmp_path.resolve() / "imgs" / "x.png"
    message = (
        f"m.csv line 4: the same inputs as {tmp_path / 'm.csv'} line 2 with another label "
        f"('tb' vs 'normal') (both read {real}); keep one row per sample"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        csv_source(tmp_path / "m.csv")


def test_the_same_file_under_two_ids_with_one_label_is_kept_for_the_leak_check(tmp_path):
    write_png(tmp_path / "x.png")
    (tmp_path / "m.csv").write_text("id,image,label\np1,x.png,a\np2,./x.png,a\n")
    assert [r.id for r in csv_source(tmp_path / "m.csv").records] == ["p1", "p2"]


def test_a_symlinked_image_in_two_class_folders_is_an_error(tmp_path):
    write_png(tmp_path / "data" / "normal" / "x.png")
    write_png(tmp_path / "data" / "tb" / "y.png", 9)
    (tmp_path / "data" / "tb" / "x.png").symlink_to(tmp_path / "data" / "normal" / "x.png")
    with pytest.raises(DataError, match=r"tb: the same inputs as .*normal with another label \('tb' vs 'normal'\)"):
        folder_source(tmp_path / "data")


# patient groups


def test_a_group_column_gives_each_record_its_group(tmp_path):
    rows = [[f"{i}.png", "ab"[i % 2], f"p{i // 2}", ""] for i in range(6)]
    path = write_csv(tmp_path, ["image", "label", "patient", "split"], rows)
    source = csv_source(path, group_col="patient")
    assert [r.group for r in source.records] == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert {r.group for r in csv_source(path).records} == {None}  # unset: no groups


def test_a_group_spanning_two_splits_of_the_manifest_is_refused_naming_it(tmp_path):
    rows = [["0.png", "a", "p1", "train"], ["1.png", "b", "p7", "train"], ["2.png", "a", "p7", "test"]]
    path = write_csv(tmp_path, ["image", "label", "patient", "split"], rows)
    message = (
        f"group 'p7' (data.group_col) spans two splits: train ({path} line 3) and test ({path} line 4); "
        "keep every sample of a group in one split"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        csv_source(path, group_col="patient")
    assert len(csv_source(path).records) == 3  # without a group column nothing is checked


def test_a_blank_or_absent_group_is_named(tmp_path):
    path = write_csv(tmp_path, ["image", "label", "patient"], [["0.png", "a", "p1"], ["1.png", "b", " "]])
    with pytest.raises(DataError, match=r"line 3 column 'patient': empty group; with data.group_col every row"):
        csv_source(path, group_col="patient")
    with pytest.raises(DataError, match=r"missing column\(s\) \['subject'\]"):
        csv_source(path, group_col="subject")


# label spellings


def test_labels_differing_only_in_case_or_spaces_are_refused_with_their_counts(tmp_path):
    rows = [["0.png", "Normal"], ["1.png", "Normal"], ["2.png", " normal "], ["3.png", "tb"]]
    path = write_csv(tmp_path, ["image", "label"], rows)
    message = (
        f"{path} column 'label': labels 'Normal' (2 samples) and 'normal' (1 sample) differ only in "
        "case or surrounding spaces; write one spelling, or list the classes in data.classes"
    )
    with pytest.raises(DataError, match=re.escape(message)):
        csv_source(path)


def test_listed_classes_take_cells_spelt_in_another_case(tmp_path):
    rows = [["0.png", "Normal"], ["1.png", "normal "], ["2.png", "TB"]]
    source = csv_source(write_csv(tmp_path, ["image", "label"], rows), classes=["normal", "tb"])
    assert source.labels == ["normal", "tb"] and [r.target for r in source.records] == [0, 0, 1]


def test_class_folders_differing_only_in_case_are_refused(tmp_path):
    for name in ("Normal/1.png", "Normal/2.png", "normal/3.png", "tb/4.png"):
        write_png(tmp_path / "data" / name)
    with pytest.raises(DataError, match=r"labels 'Normal' \(2 samples\) and 'normal' \(1 sample\)"):
        folder_source(tmp_path / "data")
    source = folder_source(tmp_path / "data", classes=["normal", "tb"])
    assert [source.labels[r.target] for r in source.records] == ["normal"] * 3 + ["tb"]
