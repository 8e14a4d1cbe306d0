"""Split names and fractions, seeded stratified and exact-count splits, assign_splits."""

from collections import Counter

import pytest

from medpeft.data.records import Record, image_source
from medpeft.data.splits import (
    assign_splits,
    holdout_fractions,
    parse_split,
    seeded_split,
    stratified_split,
)
from medpeft.errors import ConfigError, DataError


def test_stratified_split_is_seeded_and_stratified():
    targets = [int(i < 20) for i in range(100)]  # 80 / 20
    names = stratified_split(targets, (0.7, 0.1, 0.2), seed=3)
    assert Counter(names) == {"train": 70, "val": 10, "test": 20}
    assert Counter(t for t, n in zip(targets, names) if n == "test") == {0: 16, 1: 4}
    assert names == stratified_split(targets, (0.7, 0.1, 0.2), seed=3)
    assert names != stratified_split(targets, (0.7, 0.1, 0.2), seed=4)
    with pytest.raises(ConfigError):
        stratified_split(targets, (0.5, 0.5))


def test_multilabel_split_stratifies_on_rarest_label():
    targets = [(1.0, 1.0)] * 10 + [(1.0, 0.0)] * 30 + [(0.0, 0.0)] * 10  # rare, common, normal
    names = stratified_split(targets, (0.8, 0.0, 0.2), seed=0)
    test = [t for t, n in zip(targets, names) if n == "test"]
    assert Counter(test) == {(1.0, 1.0): 2, (1.0, 0.0): 6, (0.0, 0.0): 2}


def test_paper_split_sizes_are_exact():
    assert Counter(seeded_split(3500, (2781, 382, 337), seed=0)) == {
        "train": 2781, "val": 382, "test": 337,
    }
    assert Counter(seeded_split(3794, (3022, 399, 373), seed=1)) == {
        "train": 3022, "val": 399, "test": 373,
    }
    assert seeded_split(50, (8, 1, 1), seed=3) == seeded_split(50, (8, 1, 1), seed=3)
    with pytest.raises(ConfigError, match="fractions"):
        seeded_split(10, (-0.2, 0.6, 0.6))


def test_holdout_fractions_name_the_config_keys():
    assert holdout_fractions(0.1, 0.2) == pytest.approx((0.7, 0.1, 0.2))
    assert holdout_fractions(0.7, 0.3)[0] == pytest.approx(0.0)
    assert holdout_fractions(0.8, 0.2)[0] == 0.0  # 1 - 0.8 - 0.2 is -5.6e-17 in floats
    for val, test in ((0.6, 0.6), (-0.1, 0.2)):
        with pytest.raises(ConfigError, match="data.val_fraction, data.test_fraction"):
            holdout_fractions(val, test)


def test_parse_split_aliases():
    assert [parse_split(v, "x") for v in ("Training", " valid ", "TEST", "dev")] == [
        "train", "val", "test", "val"
    ]
    with pytest.raises(DataError, match="line 2 column 'split': bad split value 'holdout'"):
        parse_split("holdout", "line 2 column 'split'")


def source_of(targets, splits=None):
    splits = splits or [None] * len(targets)
    records = [Record(str(i), {"image": ("x.png",)}, t, s) for i, (t, s) in enumerate(zip(targets, splits))]
    return image_source(records, ["a", "b"], "multiclass")


def test_assign_splits_is_stratified_and_keeps_given_splits():
    source = source_of([int(i < 20) for i in range(100)])
    split = assign_splits(source, 0.1, 0.2, seed=0)
    assert [len(split.split(n)) for n in ("train", "val", "test")] == [70, 10, 20]
    assert Counter(split.targets("test")) == {0: 16, 1: 4} and Counter(split.targets("val")) == {0: 8, 1: 2}
    assert all(r.split is None for r in source.records)  # a new Source; the input is unchanged
    assert split.ids("test") == assign_splits(source, 0.1, 0.2, seed=0).ids("test")
    partial = source_of([0, 1] * 10, ["test", "test"] + [None] * 18)
    assigned = assign_splits(partial, 0.5, 0.0, seed=1)
    assert assigned.ids("test") == ["0", "1"] and len(assigned.split("val")) == 8  # 2 x round(4.5)


def test_assign_splits_names_the_config_keys_when_train_or_val_is_empty():
    with pytest.raises(ConfigError, match=r"data.val_fraction/data.test_fraction.*\['val'\]"):
        assign_splits(source_of([0, 1] * 5), 0.0, 0.2)
    with pytest.raises(ConfigError, match=r"\['train'\]"):
        assign_splits(source_of([0, 1] * 5), 0.6, 0.4)


def test_seeded_split_with_targets_keeps_exact_counts_and_each_class_share():
    targets = [0] * 600 + [1] * 300 + [2] * 100
    splits = seeded_split(targets, (8, 1, 1), seed=4)
    assert Counter(splits) == {"train": 800, "val": 100, "test": 100}
    for split, share in (("val", 100), ("test", 100)):
        per_class = Counter(t for t, s in zip(targets, splits) if s == split)
        assert abs(per_class[0] - 0.6 * share) <= 2 and abs(per_class[2] - 0.1 * share) <= 2
    assert splits == seeded_split(targets, (8, 1, 1), seed=4) != seeded_split(targets, (8, 1, 1), seed=5)


def test_a_grouped_split_keeps_every_group_whole_and_is_stratified():
    patients = [f"p{i // 4}" for i in range(200)]  # 50 patients, 4 images each
    targets = [int(i // 4 < 10) for i in range(200)]  # 10 sick patients, 40 healthy
    names = stratified_split(targets, (0.7, 0.1, 0.2), seed=2, groups=patients)
    by_patient = {}
    for patient, name in zip(patients, names):
        by_patient.setdefault(patient, set()).add(name)
    assert all(len(splits) == 1 for splits in by_patient.values())
    assert Counter(names) == {"train": 140, "val": 20, "test": 40}  # whole groups of 4 fit exactly
    assert Counter(t for t, n in zip(targets, names) if n == "test") == {0: 32, 1: 8}
    assert names == stratified_split(targets, (0.7, 0.1, 0.2), seed=2, groups=patients)
    assert names != stratified_split(targets, (0.7, 0.1, 0.2), seed=3, groups=patients)


def test_a_group_joins_val_or_test_only_when_that_brings_it_closer_to_its_count():
    groups = ["big"] * 6 + ["s0", "s1", "s2", "s3"]  # val and test want 2 of the 10 samples each
    for seed in range(8):
        names = stratified_split([0] * 10, (0.6, 0.2, 0.2), seed=seed, groups=groups)
        assert names[:6] == ["train"] * 6 and Counter(names[6:]) == {"val": 2, "test": 2}


def grouped_source(groups, splits, targets=None):
    targets = targets or [i % 2 for i in range(len(groups))]
    records = [
        Record(str(i), {"image": (f"{i}.png",)}, t, s, f"m.csv line {i + 2}", g)
        for i, (g, s, t) in enumerate(zip(groups, splits, targets))
    ]
    return image_source(records, ["a", "b"], "multiclass")


def test_assign_splits_puts_a_groups_unsplit_samples_with_its_given_split():
    groups = ["p0", "p0", "p1", "p1"] + [f"q{i}" for i in range(16)]
    source = grouped_source(groups, ["test", None, None, "val"] + [None] * 16)
    split = assign_splits(source, 0.25, 0.25, seed=0)
    assert [r.split for r in split.records[:4]] == ["test", "test", "val", "val"]
    with pytest.raises(DataError, match=r"group 'p0' \(data.group_col\) spans two splits: test \(m.csv line 2\) "
                                        r"and train \(m.csv line 3\)"):
        assign_splits(grouped_source(groups, ["test", "train"] + [None] * 18), 0.25, 0.25)


def test_assign_splits_without_groups_is_unchanged_and_with_groups_says_why_val_is_empty():
    targets = [int(i < 20) for i in range(100)]
    plain = source_of(targets)
    grouped = grouped_source([str(i) for i in range(100)], [None] * 100, targets)  # one sample per group
    assert assign_splits(grouped, 0.1, 0.2, 0).ids("test") == assign_splits(plain, 0.1, 0.2, 0).ids("test")
    with pytest.raises(ConfigError, match=r"\['val'\].*data.group_col keeps each group whole"):
        assign_splits(grouped_source(["one"] * 10, [None] * 10), 0.1, 0.2)


def test_train_and_test_only_get_val_carved_from_train_stratified_and_named(caplog):
    targets = [int(i < 40) for i in range(100)]
    splits = ["test" if i % 5 == 0 else "train" for i in range(100)]
    with caplog.at_level("INFO", logger="medpeft"):
        split = assign_splits(source_of(targets, splits), 0.25, 0.2, seed=3, layout="folder kag")
    assert split.ids("test") == [str(i) for i in range(0, 100, 5)]  # the given test split is kept
    assert len(split.split("val")) == 20 and Counter(split.targets("val")) == {0: 12, 1: 8}
    assert "data: folder kag has train and test only; carved val from train (val 25% of each class, seed 3)" \
        in caplog.text
    again = assign_splits(source_of(targets, splits), 0.25, 0.2, seed=3, layout="folder kag")
    assert again.ids("val") == split.ids("val")


def test_train_only_gets_val_and_test_carved_with_groups_whole(caplog):
    groups = [f"p{i // 2}" for i in range(40)]
    with caplog.at_level("INFO", logger="medpeft"):
        split = assign_splits(grouped_source(groups, ["train"] * 40), 0.2, 0.2, seed=0)
    assert [len(split.split(s)) for s in ("train", "val", "test")] == [24, 8, 8]
    by_group = {}
    for r in split.records:
        by_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert "has train only; carved val and test from train (val 20%, test 20% of each class, seed 0, " \
        "groups kept whole)" in caplog.text
