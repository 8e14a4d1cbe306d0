"""Label cells -> targets: class names (``|``-joined for multilabel) or 0/1 columns.

A target is a class index (multiclass) or a 0/1 tuple in label order
(multilabel); errors name the cell (file, line, column).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from medpeft.data.records import Target
from medpeft.errors import ConfigError, DataError


def natural_sorted(names: set[str]) -> list[str]:
    """Names sorted with integer names first, in numeric order."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))


def split_cell(cell: str | None, sep: str = "|") -> list[str]:
    """The non-blank names in a cell of ``sep``-joined names, stripped."""
    return [p.strip() for p in (cell or "").split(sep) if p.strip()]


def ordered_labels(seen: Iterable[str], classes: Sequence[str] | None = None) -> list[str]:
    """Label names in head order: ``classes`` if given, else the names ``seen``, sorted."""
    if classes is None:
        return natural_sorted(set(seen))
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes contain duplicates: {list(classes)}")
    return list(classes)


def parse_binary(value: str | None, where: str) -> float:
    """A 0/1 cell (``0``, ``1``, ``1.0``...) as a float; DataError naming ``where`` otherwise."""
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise DataError(f"{where}: expected 0 or 1, got {text!r}")
    return number


def binary_target(row: Mapping[str, str], columns: Sequence[str], where: str) -> tuple[float, ...]:
    """A multilabel target from one 0/1 column per label."""
    return tuple(parse_binary(row.get(c), f"{where} column {c!r}") for c in columns)


def encode_labels(
    cell: str | None, names: Sequence[str], task: str, sep: str, where: str
) -> Target:
    """A cell of class names as a class index (multiclass) or 0/1 tuple in ``names`` order."""
    values = split_cell(cell, sep)
    unknown = [v for v in values if v not in names]
    if unknown:
        raise DataError(f"{where}: unknown label(s) {unknown}; known classes {list(names)}")
    if task == "multilabel":
        return tuple(float(n in values) for n in names)
    if len(values) != 1:
        hint = "pass task='multilabel' if empty cells mean 'no finding'"
        raise DataError(f"{where}: expected one class name, got {cell!r} ({hint})")
    return names.index(values[0])
