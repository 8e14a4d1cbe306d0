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

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medpeft.data.manifest import (
    Target,
    check_fractions,
    encode_labels,
    label_names,
    parse_binary,
    parse_split,
    raise_missing,
    read_csv_rows,
    split_cell,
)
from medpeft.data.multimodal import MultiModalRecord, MultiModalSource, check_modalities
from medpeft.errors import ConfigError, DataError
from medpeft.tasks import check_task

SEPARATOR = "|"


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
    seen = (v for row in rows for v in split_cell(row.get(label_columns[0]), SEPARATOR))
    return label_names(seen, classes or None)


def encode_target(
    row: Mapping[str, str],
    label_columns: Sequence[str],
    task: str,
    names: Sequence[str],
    where: str,
) -> Target:
    """One row's target: a class index, or a 0/1 tuple in ``names`` order."""
    if len(label_columns) > 1:
        return tuple(parse_binary(row.get(c), f"{where} column {c!r}") for c in label_columns)
    column = label_columns[0]
    return encode_labels(row.get(column), names, task, SEPARATOR, f"{where} column {column!r}")


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
    header, rows = read_csv_rows(path)
    absent = [c for c in [*modalities, *label_columns] if c not in header]
    if absent:
        raise DataError(f"{path}: no column(s) {absent}; the manifest has {header}")
    names = label_names_from_rows([row for _, row in rows], label_columns, task, classes)
    base = Path(root) if root is not None else path.parent
    records, missing = [], []
    for index, (line, row) in enumerate(rows):
        where = f"{path} line {line}"
        values: dict[str, tuple[str, ...] | str] = {}
        for m in modalities:
            if kinds[m] == "text":
                values[m] = row[m]
                continue
            values[m] = tuple(str(base / p) for p in split_cell(row[m], SEPARATOR))
            missing += [f"{where} column {m!r}: {p}" for p in values[m] if not Path(p).is_file()]
        split = row.get(split_column)
        records.append(
            MultiModalRecord(
                id=(row.get(id_column) or "").strip() or str(index),
                values=values,
                target=encode_target(row, label_columns, task, names, where),
                split=parse_split(split, f"{where} column {split_column!r}") if split else None,
                where=where,
            )
        )
    raise_missing(missing, str(path))
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

    Counts are ``round(n * w / sum(weights))`` for train and val, the rest test
    (exact for weights that are the paper's split sizes); which sample goes
    where follows a seeded permutation. Unlike `medpeft.data.manifest.split_samples`
    it ignores the labels (no stratification).
    """
    weights = check_fractions(weights)
    total = sum(weights)
    n_train = round(n * weights[0] / total)
    n_val = min(n - n_train, round(n * weights[1] / total))
    names = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    order = np.random.default_rng(seed).permutation(n)
    splits = [""] * n
    for position, index in enumerate(order):
        splits[index] = names[position]
    return splits
