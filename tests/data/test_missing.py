"""Missing-modality tables: counts, split of 'both', seeding, nesting, persistence, one modality."""

import numpy as np
import pytest

from medpeft.data import missing
from medpeft.data.missing import (
    MissingSetting,
    MissingTable,
    effective_presence,
    load_tables,
    make_missing_table,
    make_split_tables,
    save_tables,
    split_settings,
)
from medpeft.errors import ConfigError, DataError

MODS = ("image", "text")


@pytest.mark.parametrize("n,eta", [(100, 0.7), (37, 0.5), (10, 0.0), (10, 1.0)])
def test_single_kind_drops_int_n_eta_samples(n, eta):
    table = make_missing_table(n, MODS, eta, "text", seed=1)
    assert (~table.present[:, 1]).sum() == int(n * eta)
    assert table.present[:, 0].all()


@pytest.mark.parametrize("kind", ["both", "mixed"])
def test_both_splits_chosen_half_half_never_both(kind):
    table = make_missing_table(101, MODS, 0.5, kind, seed=0)  # int(50.5) = 50 chosen
    missing_per_modality = (~table.present).sum(axis=0)
    assert missing_per_modality.tolist() == [25, 25]
    assert table.present.any(axis=1).all()
    odd = make_missing_table(102, MODS, 0.5, kind, seed=0)  # 51 chosen
    assert (~odd.present).sum(axis=0).tolist() == [25, 26]  # the odd one out misses the text


def test_odd_both_count_gives_the_extra_sample_to_the_second_modality():
    # ODIR test split, eta 0.7 as in the public code: 118 text-missing / 117 image-missing
    table = make_missing_table(336, MODS, 0.7, "both", seed=0)  # int(235.2) = 235 chosen
    assert (~table.present).sum(axis=0).tolist() == [117, 118]
    for seed in range(5):  # whichever samples are chosen, the counts are the same
        assert (~make_missing_table(235, MODS, 1.0, "both", seed).present).sum(axis=0).tolist() == [117, 118]


def test_mixed_with_three_modalities_drops_exactly_one():
    table = make_missing_table(90, ("a", "b", "c"), 0.9, "mixed", seed=3)
    dropped = (~table.present).sum(axis=1)
    assert set(dropped.tolist()) == {0, 1}
    assert dropped.sum() == 81
    assert (~table.present).sum(axis=0).tolist() == [27, 27, 27]
    few = make_missing_table(5, ("a", "b", "c"), 0.8, "mixed", seed=3)  # 4 chosen: c, b, a, c
    assert (~few.present).sum(axis=0).tolist() == [1, 1, 2]


def test_one_modality_is_a_no_op():
    for kind in ("image", "mixed", "both"):
        table = make_missing_table(10, ("image",), 0.7, kind, seed=0)
        assert table.present.shape == (10, 1) and table.present.all()
    ids = {s: [f"{s}{i}" for i in range(4)] for s in ("train", "val", "test")}
    settings = split_settings(MissingSetting(0.7, "both"), MissingSetting(1.0, "image"))
    tables = make_split_tables(ids, ("image",), settings, seed=0)
    assert all(t.present.all() and t.modalities == ("image",) for t in tables.values())
    assert tables["test"].presence("test3") == (True,)
    with pytest.raises(ConfigError, match="'text'"):
        make_missing_table(4, ("image",), 0.5, "text")


def test_seeded_determinism_and_nesting_across_eta():
    a = make_missing_table(200, MODS, 0.7, "both", seed=5)
    b = make_missing_table(200, MODS, 0.7, "both", seed=5)
    c = make_missing_table(200, MODS, 0.7, "both", seed=6)
    assert np.array_equal(a.present, b.present)
    assert not np.array_equal(a.present, c.present)
    small = make_missing_table(200, MODS, 0.3, "both", seed=5)
    lost_small, lost_big = ~small.present, ~a.present
    assert (lost_big[lost_small]).all()  # every drop at eta 0.3 is also made at 0.7


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    table = make_missing_table(["p,1", "=HYPERLINK(\"x\")", "-p3", "p4"], MODS, 0.5, "image", seed=2)
    saved = table.save(tmp_path / f"t{suffix}")
    if suffix == ".csv":  # escaped for spreadsheets
        assert "\"'=HYPERLINK(\"\"x\"\")\"" in saved.read_text() and "\n'-p3," in saved.read_text()
    loaded = MissingTable.load(saved)
    assert loaded.ids == table.ids and loaded.modalities == MODS
    assert np.array_equal(loaded.present, table.present)
    assert loaded.setting == MissingSetting(0.5, "image") and loaded.seed == 2
    assert loaded.presence("p,1") == table.presence("p,1")


def test_genuinely_missing_stays_missing_and_never_all():
    assert effective_presence((True, True), (False, True)) == (False, True)
    assert effective_presence((True, False), (True, True)) == (True, False)
    # the table would remove the only modality the sample has: keep what it has
    assert effective_presence((True, False), (False, True)) == (False, True)


def test_split_tables_use_train_setting_for_val_and_override_test(tmp_path):
    settings = split_settings(MissingSetting(0.7, "both"), test=MissingSetting(0.3, "text"))
    ids = {s: [f"{s}{i}" for i in range(20)] for s in ("train", "val", "test")}
    tables = make_split_tables(ids, MODS, settings, seed=0)
    assert tables["val"].setting == tables["train"].setting == MissingSetting(0.7, "both")
    assert tables["test"].setting == MissingSetting(0.3, "text")
    assert (~tables["test"].present[:, 1]).sum() == 6
    same = split_settings(MissingSetting(0.7, "both"), MissingSetting(0.3, "text"), test_applies_to_val=True)
    assert same["val"] == same["test"] == MissingSetting(0.3, "text")
    assert same["train"] == MissingSetting(0.7, "both")
    assert split_settings(MissingSetting(0.5), test_applies_to_val=True)["val"] == MissingSetting(0.5)
    save_tables(tables, tmp_path)
    loaded = load_tables(tmp_path)
    assert set(loaded) == {"train", "val", "test"}
    assert np.array_equal(loaded["val"].present, tables["val"].present)


def test_grid_and_errors(tmp_path):
    grid = list(missing.test_grid([0.1, 0.5], ["text", "image"]))
    assert [s.name for s in grid] == ["text@0.1", "text@0.5", "image@0.1", "image@0.5"]
    with pytest.raises(ConfigError, match="'audio'"):
        make_missing_table(4, MODS, 0.5, "audio")
    with pytest.raises(ConfigError, match="eta"):
        MissingSetting(1.5)
    with pytest.raises(DataError, match="'nope'"):
        make_missing_table(4, MODS, 0.5).presence("nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("# eta=0.5 kind=text seed=0\nid,image,text\n1,1\n")
    with pytest.raises(DataError, match="bad.csv"):
        MissingTable.load(bad)
