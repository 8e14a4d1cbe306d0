"""Typed configs from YAML: nested dataclasses, validated on load, ``a.b=c`` overrides.

Every error names the offending key path (``train.lr``) and what was expected;
a misspelt key gets a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medpeft.atomic import atomic_write_text
from medpeft.errors import ConfigError, did_you_mean

T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any] | None, path: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        hint = did_you_mean(unknown[0], fields)
        raise ConfigError(f"{path}: unknown key(s) {unknown}{hint} (expected some of {sorted(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _coerce(value, hints[key], f"{path}.{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise  # already names its key
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from error


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check ``value`` against a type hint, converting lists to tuples where asked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {args}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    return _coerce_scalar(value, hint, path)


def _coerce_scalar(value: Any, hint: Any, path: str) -> Any:
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" as a string
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    if hint is Path and isinstance(value, str):
        return value
    raise ConfigError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else None
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_yaml(data: Mapping[str, Any], path: str | Path) -> Path:
    """Write plain data as YAML, atomically."""
    return atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))


def to_dict(config: Any) -> dict:
    """A dataclass config as plain YAML-safe data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
