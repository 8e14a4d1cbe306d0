"""File paths of a run config, made absolute so that a run never depends on the working directory.

`PATH_KEYS` (``data.root``, ``data.manifest``, ``model.weights``) name files and folders. A
relative one in a YAML file is relative to that file's folder; one given as a ``key=value``
override or set in Python is relative to the working directory at the time. The run folder's
``config.yaml`` then records them absolute. A relative path in a run's saved config (written
by an older medpeft) is refused rather than guessed: the folder it was relative to is unknown.
``output_dir`` stays relative to the working directory (built-in configs name ``runs/...``),
and ``model.backbone`` / ``model.tokenizer`` may be hub names, so they are left as given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from medpeft.config.schema import RunConfig
from medpeft.errors import ConfigError

PATH_KEYS = ("data.root", "data.manifest", "model.weights")


def absolute(value: str, folder: str | Path) -> str:
    """``value`` (``~`` expanded) joined to ``folder`` unless absolute, normalised."""
    return os.path.abspath(os.path.join(folder, os.path.expanduser(value)))


def is_relative(value: Any) -> bool:
    """Whether ``value`` is a path string that depends on the folder it is read from."""
    return isinstance(value, str) and bool(value) and not os.path.isabs(os.path.expanduser(value))


def _path_values(data: dict) -> Iterator[tuple[str, dict, str]]:
    """``(key, section, name)`` of each `PATH_KEYS` entry present in raw config data."""
    for key in PATH_KEYS:
        section_name, name = key.split(".")
        section = data.get(section_name)
        if isinstance(section, dict) and section.get(name) is not None:
            yield key, section, name


def anchor_paths(data: dict, folder: str | Path) -> dict:
    """Raw config data (a YAML mapping) with its relative `PATH_KEYS` joined to ``folder``, in place."""
    for _, section, name in _path_values(data):
        if is_relative(section[name]):
            section[name] = absolute(section[name], folder)
    return data


def refuse_relative_paths(data: dict, where: str | Path, given: Iterable[str] = ()) -> None:
    """ConfigError for a relative `PATH_KEYS` value in a run's saved config, unless ``given`` anew."""
    for key, section, name in _path_values(data):
        if is_relative(section[name]) and key not in given:
            raise ConfigError(
                f"{where}: {key} {section[name]!r} is a relative path (saved by an older medpeft), "
                f"so which file the run used is unknown; write that file's absolute path into "
                f"{where} (medpeft eval also takes {key}=PATH)"
            )


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """A run config whose relative `PATH_KEYS` are joined to the working directory."""
    for key in PATH_KEYS:
        section_name, name = key.split(".")
        section: Any = getattr(config, section_name)
        value = getattr(section, name)
        if is_relative(value):
            section = dataclasses.replace(section, **{name: absolute(value, Path.cwd())})
            config = dataclasses.replace(config, **{section_name: section})
    return config
