"""Read a multimodal CSV manifest into records.

Layout: one column per modality, label column(s), optional ``id`` and ``split``
columns; other columns are ignored. Image cells hold a path (relative to the
manifest's folder unless ``root`` is given) or several joined by ``|``; text
cells hold raw text. An empty cell is a genuinely missing modality; the row is
kept. Labels:

* ``multiclass``: one column of class names (or integers);
* ``multilabel``: several 0/1 columns (one per label), or one column of label
  names joined by ``|`` (empty = no label, e.g. "normal").

Every problem raises `DataError` naming the file, line and column.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medpeft.data.manifest import Target, check_task, natural_sorted, parse_split
from medpeft.data.multimodal import MultiModalRecord, MultiModalSource, check_modalities
from medpeft.errors import ConfigError, DataError

SEPARATOR = "|"


def _split_cell(cell: str | None) -> list[str]:
    return [part.strip() for part in (cell or "").split(SEPARATOR) if part.strip()]


def label_names_from_rows(
    rows: Sequence[Mapping[str, str]],
    label_columns: Sequence[str],
    task: str,
    classes: Sequence[str] | None = None,
) -> list[str]:
    """Label names: the 0/1 columns, the given ``classes``, or the sorted values seen."""
    if check_task(task) == "multiclass" and len(label_columns) != 1:
        raise ConfigError(f"multiclass needs exactly one label column, got {list(label_columns)}")
    if len(label_columns) > 1:
        return list(label_columns)
    if classes:
        return list(classes)
    column = label_columns[0]
    seen = {v for row in rows for v in _split_cell(row.get(column))}
    return natural_sorted(seen)


def _binary(value: str | None, where: str, column: str) -> float:
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise DataError(f"{where} column {column!r}: expected 0 or 1, got {text!r}")
    return number


def encode_target(
    row: Mapping[str, str],
    label_columns: Sequence[str],
    task: str,
    names: Sequence[str],
    where: str,
) -> Target:
    """One row's target: a class index, or a 0/1 tuple in ``names`` order."""
    if len(label_columns) > 1:
        return tuple(_binary(row.get(c), where, c) for c in label_columns)
    column = label_columns[0]
    values = _split_cell(row.get(column))
    unknown = [v for v in values if v not in names]
    if unknown:
        raise DataError(
            f"{where} column {column!r}: unknown label(s) {unknown}; known {list(names)}"
        )
    if task == "multilabel":
        return tuple(float(n in values) for n in names)
    if len(values) != 1:
        raise DataError(
            f"{where} column {column!r}: expected one class name, got {row.get(column)!r}"
        )
    return names.index(values[0])


def _image_paths(cell: str | None, root: Path, where: str, column: str) -> tuple[str, ...]:
    paths = tuple(str(root / p) for p in _split_cell(cell))
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{where} column {column!r}: image file not found: {p}")
    return paths


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (DataError if absent or empty)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not header:
        raise DataError(f"{path}: empty manifest (no header line)")
    return header, rows


def read_multimodal_manifest(
    path: str | Path,
    kinds: Mapping[str, str],
    label_columns: Sequence[str],
    task: str = "multiclass",
    classes: Sequence[str] | None = None,
    root: str | Path | None = None,
    id_column: str = "id",
    split_column: str = "split",
    combine: Mapping[str, str] | None = None,
) -> MultiModalSource:
    """Parse a multimodal manifest.

    Args:
        path: the CSV file.
        kinds: modality column -> ``"image"`` or ``"text"``, in modality order.
        label_columns: label column(s), see the module docstring.
        task: ``"multiclass"`` or ``"multilabel"``.
        classes: label names in index order (default: sorted values seen).
        root: folder image paths are relative to (default: the manifest's folder).
        id_column: sample id column (default row number if the column is absent).
        split_column: optional split column.
        combine: image modality -> ``"stack"`` or ``"hconcat"`` (see `MultiModalDataset`).
    """
    path = Path(path)
    modalities = tuple(kinds)
    check_modalities(modalities, kinds)
    header, rows = read_rows(path)
    absent = [c for c in [*modalities, *label_columns] if c not in header]
    if absent:
        raise DataError(f"{path}: no column(s) {absent}; the manifest has {header}")
    names = label_names_from_rows(rows, label_columns, task, classes)
    base = Path(root) if root is not None else path.parent
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"{path} line {line}"
        values = {
            m: _image_paths(row[m], base, where, m) if kinds[m] == "image" else (row[m] or "")
            for m in modalities
        }
        records.append(
            MultiModalRecord(
                id=(row.get(id_column) or "").strip() or str(line - 2),
                values=values,
                target=encode_target(row, label_columns, task, names, where),
                split=parse_split(row[split_column], where) if row.get(split_column) else None,
                where=where,
            )
        )
    check_unique_ids(records)
    return MultiModalSource(records, modalities, dict(kinds), names, task, dict(combine or {}))


def check_unique_ids(records: Sequence[MultiModalRecord]) -> None:
    """Raise DataError naming the first duplicated sample id."""
    seen: dict[str, str] = {}
    for r in records:
        if r.id in seen:
            raise DataError(f"{r.where}: duplicate sample id {r.id!r} (first at {seen[r.id]})")
        seen[r.id] = r.where


def seeded_split(n: int, weights: Sequence[float], seed: int = 0) -> list[str]:
    """Assign ``train``/``val``/``test`` to ``n`` samples in proportion to ``weights``.

    Counts are ``round(n * w / sum(weights))`` for train and val, the rest test;
    which sample goes where follows a seeded permutation.
    """
    total = float(sum(weights))
    n_train = round(n * weights[0] / total)
    n_val = min(n - n_train, round(n * weights[1] / total))
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    order = np.random.default_rng(seed).permutation(n)
    splits = [""] * n
    for position, index in enumerate(order):
        splits[index] = names[position]
    return splits
