"""medpeft.config.paths: file paths of a config are absolute, whatever the working directory."""

from __future__ import annotations

import pytest
import yaml

from medpeft.config import RunConfig, load_config
from medpeft.config.paths import with_absolute_paths
from medpeft.config.schema import DataSettings
from medpeft.errors import ConfigError


@pytest.fixture
def config_file(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    path = folder / "run.yaml"
    data = {"data": {"manifest": "lists/data.csv", "root": "../images"},
            "model": {"weights": "w.safetensors"}}
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_paths_in_a_yaml_file_are_relative_to_its_folder(config_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the config's folder
    config = load_config(config_file)
    assert config.data.manifest == str(config_file.parent / "lists" / "data.csv")
    assert config.data.root == str(tmp_path / "images")
    assert config.model.weights == str(config_file.parent / "w.safetensors")


def test_override_paths_are_relative_to_the_working_directory(config_file, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load_config(config_file, ["data.manifest=other.csv", f"model.weights={tmp_path}/abs.pt"])
    assert config.data.manifest == str(work / "other.csv")
    assert config.model.weights == str(tmp_path / "abs.pt")
    assert config.data.root == str(tmp_path / "images")  # the file's own stays relative to the file


def test_a_saved_run_config_with_a_relative_path_is_refused_unless_given(config_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        load_config(config_file, saved_run=True)
    assert str(error.value) == (
        f"{config_file}: data.root '../images' is a relative path (saved by an older medpeft), so "
        f"which file the run used is unknown; write that file's absolute path into {config_file} "
        "(medpeft eval also takes data.root=PATH)"
    )
    given = ["data.root=/data/images", "data.manifest=/data/a.csv", "model.weights=/w.pt"]
    assert load_config(config_file, given, saved_run=True).data.root == "/data/images"


def test_a_config_built_in_python_gets_absolute_paths_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = with_absolute_paths(RunConfig(data=DataSettings(manifest="data.csv", root=None)))
    assert config.data.manifest == str(tmp_path / "data.csv") and config.data.root is None
    assert with_absolute_paths(config) == config
