"""Images shared between splits: the same file by any path, or byte-identical copies."""

import logging
import shutil

import numpy as np
import pytest
from PIL import Image

import medpeft.data.leakage as leakage
from medpeft.data.leakage import check_leakage, shared_images
from medpeft.data.records import Record
from medpeft.errors import DataError

IMAGE = {"image": "image"}


def png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)
    return str(path)


def record(line, paths, split, kinds=IMAGE):
    values = {m: tuple(paths) if kind == "image" else paths for m, kind in kinds.items()}
    return Record(str(line), values, 0, split, f"m.csv line {line}")


def test_a_byte_identical_copy_in_train_and_test_stops_naming_both_rows(tmp_path):
    a = png(tmp_path / "a.png", 10)
    (tmp_path / "sub").mkdir()
    copy = shutil.copy(a, tmp_path / "sub" / "copy.png")
    other = png(tmp_path / "b.png", 20)
    records = [record(2, [a], "train"), record(3, [other], "train"), record(4, [str(copy)], "test")]
    with pytest.raises(DataError) as info:
        check_leakage(records, IMAGE)
    message = str(info.value)
    assert message.startswith("1 image(s) shared between splits (data.leakage: error):")
    assert f"m.csv line 2 (train) and m.csv line 4 (test): byte-identical files {a} and {copy}" in message
    assert "line 3" not in message and "or set data.leakage: warn" in message


def test_the_same_file_by_another_path_in_two_splits_is_found(tmp_path):
    a = png(tmp_path / "imgs" / "a.png", 10)
    dotted = str(tmp_path / "imgs" / ".." / "imgs" / "a.png")
    records = [record(2, [a], "val"), record(3, [dotted], "test")]
    assert shared_images(records, IMAGE) == [f"m.csv line 2 (val) and m.csv line 3 (test): the same file {a}"]


def test_one_shared_image_of_a_multimodal_sample_is_a_leak(tmp_path):
    kinds = {"fundus": "image", "note": "text"}
    shared = png(tmp_path / "f.png", 1)
    records = [record(2, [shared], "train", kinds), record(3, [shared], "test", kinds)]
    records[1].values["note"] = "another report"
    assert len(shared_images(records, kinds)) == 1


def test_copies_within_one_split_and_distinct_images_are_no_leak(tmp_path):
    a = png(tmp_path / "a.png", 10)
    copy = str(shutil.copy(a, tmp_path / "copy.png"))
    same_size = png(tmp_path / "c.png", 30)
    assert (tmp_path / "a.png").stat().st_size == (tmp_path / "c.png").stat().st_size
    records = [record(2, [a], "train"), record(3, [copy], "train"), record(4, [same_size], "test")]
    assert shared_images(records, IMAGE) == []


def test_files_are_read_only_where_sizes_and_heads_agree_across_splits(tmp_path, monkeypatch):
    head = bytes(leakage.HEAD_BYTES)
    first, second = tmp_path / "1.npy", tmp_path / "2.npy"
    first.write_bytes(head + b"tail one")
    second.write_bytes(head + b"tail two")  # same size, same head, other bytes
    lonely = png(tmp_path / "lonely.png", 5)  # a size no other file has
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    records = [record(2, [str(first)], "train"), record(3, [str(second)], "test"), record(4, [lonely], "val")]
    assert shared_images(records, IMAGE) == []
    assert lonely not in opened and opened.count(str(first)) == 2  # its head, then the whole file


def test_warn_logs_the_rows_and_goes_on(tmp_path, caplog):
    a = png(tmp_path / "a.png", 10)
    records = [record(2, [a], "train"), record(3, [a], "test")]
    with caplog.at_level(logging.WARNING):
        check_leakage(records, IMAGE, "warn")
    assert "warning: 1 image(s) shared between splits (data.leakage: warn):" in caplog.text
    assert "m.csv line 2 (train) and m.csv line 3 (test): the same file" in caplog.text


def test_a_missing_file_is_left_to_the_image_check(tmp_path):
    gone = str(tmp_path / "gone.png")
    also = str(tmp_path / "also_gone.png")
    assert shared_images([record(2, [gone], "train"), record(3, [also], "test")], IMAGE) == []
