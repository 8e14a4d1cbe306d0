"""A run's results stay those of its own data, whatever the working directory or later edits.

The run folder records its file paths absolute and a fingerprint of its data; eval, a rerun
and a resume refuse data that changed since, naming the files; other data named explicitly
are evaluated into ``RUN/evals/<name>/``, never over the run's own results.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from medpeft.cli import main
from medpeft.data.synthetic import make_synthetic_dataset
from medpeft.errors import DataError
from medpeft.run_layout import CONFIG, DATA_FINGERPRINT, RunLayout
from medpeft.runs.fingerprint import check_fingerprint, describe_changes

from .conftest import one_line, snapshot


def _dataset(folder: Path, seed: int = 0) -> Path:
    """A tiny two-class dataset; its manifest is ``folder/manifest.csv``."""
    return make_synthetic_dataset(folder, ("normal", "lesion"), n_per_class=12, img_size=32, seed=seed)


def _contents(run: Path) -> dict[str, bytes]:
    return {name: data for name, (data, _) in snapshot(run).items()}


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A private dataset: the tests change its files."""
    return _dataset(tmp_path / "data")


def test_a_run_does_not_depend_on_the_working_directory(tmp_path, dataset, image_argv, monkeypatch, capsys):
    monkeypatch.chdir(dataset.parent)
    run = tmp_path / "run"
    argv = image_argv(run, "train.epochs=1", "data.manifest=manifest.csv")
    assert main(argv) == 0
    before = _contents(run)
    other = _dataset(tmp_path / "other", seed=1)  # other images, also in a manifest.csv
    monkeypatch.chdir(other.parent)
    assert main(["eval", str(run)]) == 0
    assert _contents(run) == before  # the run's own data scored again: the same scores
    capsys.readouterr()
    assert main(argv) == 2  # here the same command names other data
    line = one_line(capsys.readouterr().err)
    assert f"(data.manifest: '{dataset}' -> '{other}')" in line and "--no-resume" in line
    assert _contents(run) == before
    assert yaml.safe_load((run / CONFIG).read_text())["data"]["manifest"] == str(dataset)


def test_an_old_run_with_a_relative_path_is_refused(tmp_path, dataset, image_argv, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(image_argv(run, "train.epochs=1", f"data.manifest={dataset}")) == 0
    config = yaml.safe_load((run / CONFIG).read_text())
    config["data"]["manifest"] = "manifest.csv"  # as medpeft saved a relative path before
    (run / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    (run / DATA_FINGERPRINT).unlink()
    monkeypatch.chdir(_dataset(tmp_path / "other", seed=1).parent)
    before = snapshot(run)
    assert main(["eval", str(run)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"medpeft eval: error: {run / CONFIG}: data.manifest 'manifest.csv' is a relative path "
        "(saved by an older medpeft), so which file the run used is unknown; write that file's "
        f"absolute path into {run / CONFIG} (medpeft eval also takes data.manifest=PATH)"
    )
    assert snapshot(run) == before
    assert main(["eval", str(run), f"data.manifest={dataset}"]) == 0  # named: evaluated aside
    assert f"results in {run / 'evals' / 'manifest'}" in capsys.readouterr().out
    assert {name for name in snapshot(run) if not name.startswith("evals")} == set(before)


def test_changed_data_are_refused_naming_the_file(tmp_path, dataset, image_argv, capsys):
    run = tmp_path / "run"
    argv = image_argv(run, "train.epochs=1", f"data.manifest={dataset}")
    assert main(argv) == 0
    images = sorted((dataset.parent / "images").glob("*.png"))
    shutil.copyfile(images[1], images[0])
    before = snapshot(run)
    capsys.readouterr()
    resume = image_argv(run, "train.epochs=2", f"data.manifest={dataset}")
    for command, advice in ((["eval", str(run)], "name them: medpeft eval"), (argv, "new output_dir"),
                            (resume, "new output_dir")):
        assert main(command) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{run}: the data changed since the run was trained: 1 image file(s) changed (size or " \
               f"modification time): {images[0]}; " in line and advice in line
    assert snapshot(run) == before
    for name in ("manifest", "manifest-2"):  # data named explicitly: evaluated aside, never over
        assert main(["eval", str(run), "--data", str(dataset)]) == 0
        assert f"results in {run / 'evals' / name}" in capsys.readouterr().out
        assert (run / "evals" / name / "test_metrics.json").is_file()
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("evals")} == before


def test_an_eval_of_a_run_without_a_fingerprint_warns(tmp_path, image_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    (run / DATA_FINGERPRINT).unlink()
    assert main(["eval", str(run)]) == 0
    assert (
        f"warning: {run} records no data fingerprint (trained by an older medpeft); the data "
        "cannot be checked against those it was trained on"
    ) in capsys.readouterr().err


FILES = {"/d/a.png": [10, 1], "/d/b.png": [11, 2], "/d/c.png": [12, 3]}
RECORDED = {"manifest": {"path": "/d/m.csv", "sha256": "1"}, "samples": "s", "files": FILES}


@pytest.mark.parametrize(
    ("current", "changes"),
    [
        (RECORDED, []),
        ({**RECORDED, "manifest": {"path": "/d/m.csv", "sha256": "2"}, "samples": "t"},
         ["the manifest /d/m.csv differs (sha256)"]),
        ({**RECORDED, "files": {"/d/a.png": [10, 5], "/d/b.png": [11, 2], "/d/e.png": [1, 1]}},
         ["1 image file(s) changed (size or modification time): /d/a.png", "1 new image file(s): /d/e.png",
          "1 image file(s) no longer read: /d/c.png"]),
        ({**RECORDED, "samples": "t"}, ["the samples read (ids, labels or texts) differ"]),
    ],
)
def test_describe_changes_names_each_kind_of_change(current, changes):
    assert describe_changes(RECORDED, current) == changes


def test_an_unreadable_fingerprint_is_named(tmp_path):
    layout = RunLayout.at(tmp_path)
    layout.data_fingerprint.write_text('{"files": ')
    with pytest.raises(DataError, match=r"data_fingerprint.json: not a data fingerprint medpeft wrote \(JSONDecodeError"):
        check_fingerprint(layout, RECORDED, "advice")
