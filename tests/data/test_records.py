"""Records and sources: per-split views and the checks a Source makes on its records."""

import pytest

from medpeft.data.records import Record, Source, check_modalities, image_source
from medpeft.errors import ConfigError, DataError


def record(i, target, split=None, values=None):
    return Record(str(i), values or {"image": (f"{i}.png",)}, target, split, f"m.csv line {i + 2}")


def test_split_ids_targets_and_num_classes():
    records = [record(0, 1, "train"), record(1, 0, "test"), record(2, 1, "train"), record(3, 0)]
    source = image_source(records, ["a", "b"], "multiclass")
    assert source.modalities == ("image",) and source.kinds == {"image": "image"}
    assert source.ids("train") == ["0", "2"] and source.targets("train") == [1, 1]
    assert [r.id for r in source.split("test")] == ["1"] and source.ids(None) == ["3"]
    assert source.num_classes == 2 and source.labels == ["a", "b"]


def test_available_modalities():
    r = Record("s", {"img": (), "oct": ("o.png",), "note": "  "}, 0)
    assert r.available(("img", "oct", "note", "absent")) == (False, True, False, False)


def test_bad_targets_are_rejected():
    with pytest.raises(DataError, match="target 2 does not fit a multiclass task with 2 classes"):
        image_source([record(0, 0), record(1, 2)], ["a", "b"], "multiclass")
    with pytest.raises(DataError, match="multilabel"):
        image_source([record(0, (1.0,))], ["a", "b"], "multilabel")


def test_source_checks_ids_presence_kinds_and_task():
    with pytest.raises(DataError, match="line 3: duplicate sample id '0'"):
        image_source([record(0, 0), Record("0", {"image": ("x",)}, 0, where="m.csv line 3")],
                     ["a"], "multiclass")
    with pytest.raises(DataError, match="line 2.*no modality"):
        image_source([record(0, 0, values={"image": ()})], ["a"], "multiclass")
    with pytest.raises(DataError, match="no samples"):
        image_source([], ["a"], "multiclass")
    with pytest.raises(ConfigError, match="task"):
        image_source([record(0, 0)], ["a"], "regression")
    with pytest.raises(ConfigError, match="'note' needs a kind"):
        Source([record(0, 0)], ("image", "note"), {"image": "image"}, ["a"], "multiclass")


def test_check_modalities():
    check_modalities(("a", "t"), {"a": "image", "t": "text"})
    with pytest.raises(ConfigError, match="at most one text"):
        check_modalities(("t", "u"), {"t": "text", "u": "text"})
    with pytest.raises(ConfigError, match="at least one modality"):
        check_modalities((), {})
