"""Synthetic dataset: byte-identical for a seed, readable as a manifest, and learnable."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from medpeft.data.imageio import load_image
from medpeft.data.sources import csv_source
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.errors import ConfigError


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def features(records, size=8):
    images = [load_image(r.values["image"][0]).convert("L").resize((size, size)) for r in records]
    return np.stack([np.asarray(image).ravel() / 255 for image in images])


def test_same_seed_same_bytes(tmp_path):
    kwargs = dict(classes=("normal", "lesion", "nodule"), n_per_class=4, img_size=16)
    make_synthetic_dataset(tmp_path / "a", seed=5, **kwargs)
    make_synthetic_dataset(tmp_path / "b", seed=5, **kwargs)
    make_synthetic_dataset(tmp_path / "c", seed=6, **kwargs)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")


def test_manifest_reads_back_with_splits(tmp_path):
    path = make_synthetic_dataset(tmp_path, n_per_class=10, img_size=16, splits=(0.6, 0.2, 0.2))
    source = csv_source(path)
    assert source.task == "multiclass" and source.labels == ["lesion", "normal"]
    assert [len(source.split(n)) for n in ("train", "val", "test")] == [12, 4, 4]
    assert load_image(source.split("train")[0].values["image"][0]).size == (16, 16)


def test_multilabel_reads_as_multilabel(tmp_path):
    path = make_synthetic_dataset(
        tmp_path, classes=("a", "b", "c"), n_per_class=5, task="multilabel"
    )
    source = csv_source(path)
    targets = [t for n in ("train", "val", "test") for t in source.targets(n)]
    assert source.task == "multilabel" and len(targets) == 15
    assert any(sum(t) == 0 for t in targets) and any(sum(t) >= 2 for t in targets)


def test_signal_is_separable(tmp_path):
    path = make_synthetic_dataset(
        tmp_path, classes=("normal", "lesion", "nodule"), n_per_class=40, img_size=32, seed=1,
        splits=(0.5, 0.0, 0.5),
    )
    source = csv_source(path)
    train, test = source.split("train"), source.split("test")
    model = LogisticRegression(max_iter=500).fit(features(train), source.targets("train"))
    accuracy = model.score(features(test), source.targets("test"))
    assert accuracy > 0.8  # chance is 1/3


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError):
        make_synthetic_dataset(tmp_path, classes=("only",))
    with pytest.raises(ConfigError):
        make_synthetic_dataset(tmp_path, task="regression")
