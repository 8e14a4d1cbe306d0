"""Run configs: one typed schema (:mod:`.schema`), YAML + ``key=value`` overrides
(:mod:`.tools`), absolute file paths (:mod:`.paths`) and the mapping of medpeft 0.1 keys
(:mod:`.legacy`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from medpeft.config.legacy import upgrade
from medpeft.config.paths import anchor_paths, refuse_relative_paths
from medpeft.config.schema import (
    DataSettings,
    GridSettings,
    InterventionSettings,
    MissingSettings,
    ModelSettings,
    RunConfig,
)
from medpeft.config.tools import apply_overrides, from_dict, read_yaml, save_yaml, to_dict
from medpeft.errors import ConfigError, did_you_mean

CORE_KEYS = ("name", "output_dir", "method", "model", "data", "missing", "intervention", "train")


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    method_settings: Mapping[str, type] | None = None,
    saved_run: bool = False,
) -> RunConfig:
    """Read a YAML run config (or start from defaults), apply overrides, validate.

    File paths (`medpeft.config.paths.PATH_KEYS`) come back absolute: the file's relative
    to its folder, the overrides' relative to the working directory.

    Args:
        path: YAML file, or None for the defaults.
        overrides: ``section.key=value`` strings.
        method_settings: settings dataclass per method name (default: the registry's).
        saved_run: ``path`` is a run folder's ``config.yaml``: a relative file path in it
            (an older medpeft's) is refused unless an override gives that key.

    Raises:
        ConfigError: naming the key (with a did-you-mean for misspelt keys/methods).
    """
    if method_settings is None:
        from medpeft.methods import settings_types  # settings dataclasses of the registry

        method_settings = settings_types()
    where = str(path or "config")
    data = read_yaml(path) if path is not None else {}
    if path is not None and saved_run:
        refuse_relative_paths(data, path, [item.partition("=")[0] for item in overrides])
    elif path is not None:
        anchor_paths(data, Path(path).parent)
    data = upgrade(anchor_paths(apply_overrides(data, overrides), Path.cwd()))
    if not saved_run:
        name_output_dir(data, [item.partition("=")[0] for item in overrides])
    core = {k: v for k, v in data.items() if k not in method_settings}
    unknown = sorted(set(core) - set(CORE_KEYS))
    if unknown:
        options = [*CORE_KEYS, *method_settings]
        raise ConfigError(
            f"{where}: unknown key(s) {unknown}{did_you_mean(unknown[0], options)} "
            f"(sections: {list(CORE_KEYS)} and a method's settings {sorted(method_settings)})"
        )
    config = from_dict(RunConfig, core, path=where)
    if config.method not in method_settings:
        hint = did_you_mean(config.method, method_settings)
        raise ConfigError(f"{where}.method: {config.method!r} is not one of {sorted(method_settings)}{hint}")
    config.settings = {
        name: from_dict(kind, data.get(name), path=name)
        for name, kind in method_settings.items()
        if name in data or name == config.method
    }
    return config


def name_output_dir(data: dict, overridden: Sequence[str]) -> None:
    """Set ``output_dir`` to ``runs/<name>`` when ``name`` is given and ``output_dir`` is not.

    ``name`` on the command line wins over the file's ``output_dir``; an ``output_dir`` on the
    command line wins over both.
    """
    name = data.get("name")
    if name is None or "output_dir" in overridden:
        return
    if "name" in overridden or "output_dir" not in data:
        data["output_dir"] = f"runs/{name}"


def config_dict(config: RunConfig) -> dict:
    """A run config as plain YAML data, method sections at the top level."""
    data = to_dict(config)
    settings = data.pop("settings")
    return {**data, **settings}


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config (what actually ran) as YAML, atomically."""
    return save_yaml(config_dict(config), path)


__all__ = [
    "DataSettings",
    "GridSettings",
    "InterventionSettings",
    "MissingSettings",
    "ModelSettings",
    "RunConfig",
    "config_dict",
    "from_dict",
    "load_config",
    "save_config",
]
