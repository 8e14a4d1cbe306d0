"""What a run reads: patient groups, images shared between splits and the positive class,
from the config keys ``data.group_col``, ``data.leakage`` and ``data.positive_class``."""

from __future__ import annotations

import shutil
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from medpeft.config import load_config
from medpeft.errors import ConfigError, DataError
from medpeft.run_layout import RunLayout
from medpeft.runs.data import describe_source, load_source, run_positive_class


def write_patients(folder, patients=20, per_patient=3, labels=("abnormal", "normal")):
    """A manifest of ``per_patient`` distinct images for each patient, one label per patient."""
    rows = ["image,label,patient"]
    for p in range(patients):
        for k in range(per_patient):
            name = f"p{p}_{k}.png"
            Image.fromarray(np.full((8, 8), p * per_patient + k, dtype=np.uint8)).save(folder / name)
            rows.append(f"{name},{labels[p % 2]},p{p}")
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def read(tmp_path, manifest, *overrides):
    config = load_config(None, [f"data.manifest={manifest}", *overrides])
    return config, load_source(config, RunLayout.at(tmp_path / "run"))


def test_group_col_keeps_each_patient_in_one_split(tmp_path):
    manifest = write_patients(tmp_path)
    _, source = read(tmp_path, manifest, "data.group_col=patient", "data.val_fraction=0.2")
    splits = defaultdict(set)
    for record in source.records:
        splits[record.group].add(record.split)
    assert all(len(s) == 1 for s in splits.values()) and {"train", "val", "test"} <= set().union(*splits.values())
    _, plain = read(tmp_path, manifest, "data.val_fraction=0.2")
    assert {r.group for r in plain.records} == {None}  # unset: record-wise, as before


def test_group_col_on_a_source_without_a_manifest_is_refused(tmp_path):
    config = load_config(None, ["data.source=folder", f"data.root={tmp_path}", "data.group_col=patient"])
    with pytest.raises(ConfigError, match="data.group_col: 'patient' names a manifest column; source 'folder'"):
        load_source(config, RunLayout.at(tmp_path / "run"))


def test_a_copy_of_a_training_image_in_the_test_split_stops_the_run_unless_warned(tmp_path, caplog):
    manifest = write_patients(tmp_path, patients=6, per_patient=1)
    shutil.copy(tmp_path / "p0_0.png", tmp_path / "copy.png")
    splits = ["train"] * 4 + ["val"] * 2
    rows = [f"{row},{s}" for row, s in zip(manifest.read_text().splitlines()[1:], splits)]
    rows.append("copy.png,abnormal,p9,test")
    manifest.write_text("image,label,patient,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"m.csv line 2 \(train\) and .*m.csv line 8 \(test\): byte-identical files"):
        read(tmp_path, manifest)
    with caplog.at_level("WARNING"):
        read(tmp_path, manifest, "data.leakage=warn")
    assert "warning: 1 image(s) shared between splits (data.leakage: warn)" in caplog.text


def test_the_positive_class_is_named_and_checked(tmp_path):
    config, source = read(tmp_path, write_patients(tmp_path))
    assert source.labels == ["abnormal", "normal"] and run_positive_class(config, source) == "abnormal"
    lines = describe_source(source, "abnormal")
    assert "positive class: abnormal (sensitivity, specificity, PPV and AUROC are about it; " in lines[2]
    other = tmp_path / "other"
    other.mkdir()
    config, source = read(other, write_patients(other, labels=("cat", "dog")), "data.positive_class=Dog")
    with pytest.raises(ConfigError, match=r"'Dog' is not one of the classes \['cat', 'dog'\]; did you mean 'dog'\?"):
        run_positive_class(config, source)


def test_the_new_keys_are_validated_with_the_config():
    assert load_config(None, ["data.positive_class=1"]).data.positive_class == "1"  # YAML reads an integer
    with pytest.raises(ConfigError, match=r"data.leakage: 'ignore' is not one of \['error', 'warn'\]"):
        load_config(None, ["data.leakage=ignore"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['group_column'\]; did you mean 'group_col'\?"):
        load_config(None, ["data.group_column=patient"])
