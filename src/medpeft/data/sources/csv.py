"""Read a CSV manifest into a `Source`: one image per row, or one column per modality.

Single-image form (``modalities=None``): one modality named ``"image"`` whose
paths come from column ``image_col``. Multimodal form: ``modalities`` maps each
modality column to its kind (``"image"``/``"text"``), in modality order. Either
way an image cell holds a path (relative to the manifest's folder unless
``root`` is given) or several joined by ``|``, a text cell raw text, and an
empty cell is a genuinely missing modality (a row with no modality at all is
an error). Labels:

* ``label_col``: class names; several joined by ``label_sep`` make the task
  multilabel (inferred unless ``task`` is given) with an empty cell = all negative;
* ``label_cols``: one 0/1 column per label (multilabel); these name the labels.

Optional ``id_col`` (default: row number), ``split_col`` (train/val/test;
empty = unsplit) and ``group_col`` (e.g. the patient: every group stays in one
split) columns; other columns are ignored. Every problem raises
`DataError` naming the file, line and column; missing files are listed together.
`read_inputs` reads the modality columns alone, unlabelled (for prediction).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from medpeft.data.csvfile import Rows, check_columns, raise_missing, read_csv_rows
from medpeft.data.labels import binary_target, encode_labels, ordered_labels, split_cell
from medpeft.data.records import (
    IMAGE_MODALITY,
    Record,
    Source,
    Value,
    check_modalities,
    check_records,
    drop_duplicates,
)
from medpeft.data.splits import given_group_splits, parse_split
from medpeft.errors import ConfigError, DataError
from medpeft.tasks import check_task

IMAGE_SEP = "|"
UNLABELLED = 0  # placeholder target of records read without labels


def csv_source(
    manifest: str | Path,
    *,
    modalities: Mapping[str, str] | None = None,
    image_col: str = "image",
    label_col: str = "label",
    label_cols: Sequence[str] | None = None,
    label_sep: str = "|",
    split_col: str | None = "split",
    id_col: str | None = "id",
    task: str | None = None,
    classes: Sequence[str] | None = None,
    root: str | Path | None = None,
    combine: Mapping[str, str] | None = None,
    group_col: str | None = None,
) -> Source:
    """Read a CSV manifest (see the module docstring).

    Args:
        manifest: the CSV file.
        modalities: modality column -> kind; None: single-image form.
        image_col: column of image paths (single-image form).
        label_col: column of class names (ignored when ``label_cols`` is given).
        label_cols: one 0/1 column per label (multilabel).
        label_sep: separator of several class names in one cell.
        split_col: optional split column (None: ignore any).
        id_col: optional sample id column (None: row numbers). Without one, a row
            repeating another's inputs is dropped with a warning (see `drop_duplicates`);
            with or without, rows of the same files (by real path) that disagree on the
            label, split or group are a DataError naming both.
        task: ``multiclass``/``multilabel`` (default: inferred).
        classes: label names in head order (default: sorted names found).
        root: folder of relative image paths (default: the manifest's folder).
        combine: image modality -> ``"stack"`` or ``"hconcat"``.
        group_col: optional column of groups (e.g. patient ids; every row needs one)
            that must each stay in one split; a group spanning two values of the split
            column is a DataError naming it.
    """
    path = Path(manifest)
    kinds = dict(modalities) if modalities is not None else {IMAGE_MODALITY: "image"}
    columns = {m: m for m in kinds} if modalities is not None else {IMAGE_MODALITY: image_col}
    rows = _read(path, columns, kinds, [*(label_cols or [label_col]), *([group_col] if group_col else [])])
    task, labels = _task_and_labels(rows, label_col, label_cols, label_sep, task, classes, path)
    records = _unlabelled(path, rows, columns, kinds, root, id_col)
    for index, (record, (_, row)) in enumerate(zip(records, rows)):
        record.id = record.id or str(index)
        if label_cols:
            record.target = binary_target(row, label_cols, record.where)
        else:
            cell = f"{record.where} column {label_col!r}"
            record.target = encode_labels(row.get(label_col), labels, task, label_sep, cell)
        split = (row.get(split_col) or "").strip() if split_col else ""
        if split:
            record.split = parse_split(split, f"{record.where} column {split_col!r}")
        if group_col:
            record.group = _group(row, group_col, record.where)
    given_group_splits(records)
    with_ids = bool(id_col and any(id_col in row for _, row in rows))
    records = drop_duplicates(records, labels, drop=not with_ids)  # with ids, each row is a sample
    return Source(records, tuple(kinds), kinds, labels, task, dict(combine or {}))


def read_inputs(
    manifest: str | Path,
    modalities: Mapping[str, str],
    *,
    root: str | Path | None = None,
    id_col: str | None = "id",
) -> list[Record]:
    """Unlabelled records of a manifest with one column per modality (``medpeft predict``).

    Cells are read as by `csv_source`; label and split columns are ignored and
    every target is the placeholder `UNLABELLED`. Ids come from ``id_col`` when
    filled, else the row's first image path (else the row number).

    Args:
        manifest: the CSV file.
        modalities: modality column -> kind, in modality order.
        root: folder of relative image paths (default: the manifest's folder).
        id_col: optional sample id column (None: image paths).
    """
    path = Path(manifest)
    kinds = dict(modalities)
    columns = {m: m for m in kinds}
    records = _unlabelled(path, _read(path, columns, kinds), columns, kinds, root, id_col)
    for index, record in enumerate(records):
        paths = [v[0] for v in record.values.values() if isinstance(v, tuple) and v]
        record.id = record.id or (paths[0] if paths else str(index))
    check_records(records, tuple(kinds))
    return records


def _read(
    path: Path, columns: Mapping[str, str], kinds: Mapping[str, str], more: Sequence[str] = ()
) -> Rows:
    """Rows of the manifest, once the kinds and the needed columns are checked."""
    check_modalities(tuple(kinds), kinds)
    header, rows = read_csv_rows(path)
    check_columns(path, header, [*columns.values(), *more])
    return rows


def _unlabelled(
    path: Path,
    rows: Rows,
    columns: Mapping[str, str],
    kinds: Mapping[str, str],
    root: str | Path | None,
    id_col: str | None,
) -> list[Record]:
    """One record per row (id ``""`` unless ``id_col`` holds one, target `UNLABELLED`).

    DataError listing every missing image file.
    """
    base = Path(root) if root is not None else path.parent
    records, missing = [], []
    for line, row in rows:
        where = f"{path} line {line}"
        values = {m: _value(row[c], kinds[m], base) for m, c in columns.items()}
        missing += [
            f"{where} column {c!r}: {p}"
            for m, c in columns.items() if kinds[m] == "image"
            for p in values[m] if not Path(p).is_file()
        ]
        sample_id = (row.get(id_col) or "").strip() if id_col else ""
        records.append(Record(sample_id, values, UNLABELLED, where=where))
    raise_missing(missing, str(path))
    return records


def _group(row: Mapping[str, str], group_col: str, where: str) -> str:
    """The group cell of a row; DataError naming the cell if it is blank."""
    group = (row.get(group_col) or "").strip()
    if not group:
        raise DataError(
            f"{where} column {group_col!r}: empty group; with data.group_col every row needs one "
            "(e.g. its patient id)"
        )
    return group


def _value(cell: str, kind: str, base: Path) -> Value:
    """A text cell as is; an image cell as its paths under ``base``."""
    if kind == "text":
        return cell
    return tuple(str(base / p) for p in split_cell(cell, IMAGE_SEP))


def _task_and_labels(
    rows: Rows,
    label_col: str,
    label_cols: Sequence[str] | None,
    sep: str,
    task: str | None,
    classes: Sequence[str] | None,
    path: Path,
) -> tuple[str, list[str]]:
    if label_cols:
        if check_task(task or "multilabel") != "multilabel":
            raise ConfigError("label_cols are 0/1 columns of a multilabel task; use label_col")
        if classes and list(classes) != list(label_cols):
            raise ConfigError(f"classes {list(classes)} differ from label_cols {list(label_cols)}")
        return "multilabel", list(label_cols)
    cells = [split_cell(row.get(label_col), sep) for _, row in rows]
    task = task or ("multilabel" if any(len(c) > 1 for c in cells) else "multiclass")
    names = (n for c in cells for n in c)
    return check_task(task), ordered_labels(names, classes or None, f"{path} column {label_col!r}")
