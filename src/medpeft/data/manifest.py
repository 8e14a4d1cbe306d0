"""Single-modality manifests: which image files, which labels, which split.

Two sources give the same `Manifest`:

* `read_csv_manifest`: one row per image. Labels are class names in one column
  (several joined by ``label_sep`` make the task multi-label; an empty cell is
  then "no finding", all negative) or one 0/1 column per class (``label_cols``).
  An optional split column holds ``train``/``val``/``test``.
* `read_image_folder`: ``root/<class>/...`` or ``root/<split>/<class>/...``.

Without a split, all samples sit under ``"all"``; `split_samples` (or
`Manifest.with_splits`) makes a seeded, stratified train/val/test split.
Every problem raises `DataError` naming the file, line and column; no row is
ever dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpeft.data.imageio import has_image_suffix
from medpeft.errors import ConfigError, DataError

TASKS = ("multiclass", "multilabel")
SPLITS = ("train", "val", "test")
UNSPLIT = "all"
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
MAX_LISTED = 5

Target = int | tuple[float, ...]


@dataclass(frozen=True)
class Sample:
    """One image and its label.

    Attributes:
        path: image file.
        target: class index (multiclass) or 0/1 tuple in class order (multilabel).
        where: origin for error messages, e.g. ``labels.csv line 7``.
    """

    path: str
    target: Target
    where: str = ""


@dataclass
class Manifest:
    """Samples per split (``train``/``val``/``test``, or ``all``), class names and task."""

    splits: dict[str, list[Sample]]
    classes: list[str]
    task: str

    def __post_init__(self) -> None:
        check_task(self.task)
        if not any(self.splits.values()):
            raise DataError("the manifest holds no samples")

    @property
    def num_classes(self) -> int:
        """Number of classes (output units of the head)."""
        return len(self.classes)

    @property
    def has_splits(self) -> bool:
        """Whether the samples are already assigned to train/val/test."""
        return UNSPLIT not in self.splits

    def split(self, name: str) -> list[Sample]:
        """Samples of one split (DataError if the manifest has no such split)."""
        if name not in self.splits:
            raise DataError(f"no split {name!r} in the manifest; it has {list(self.splits)}")
        return self.splits[name]

    def with_splits(self, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> Manifest:
        """This manifest if already split, else a seeded stratified train/val/test split."""
        if self.has_splits:
            return self
        return Manifest(split_samples(self.splits[UNSPLIT], fractions, seed), self.classes, self.task)


def check_task(task: str) -> str:
    """Return ``task`` if it is a known task type, else raise ConfigError."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {list(TASKS)}, got {task!r}")
    return task


def strata(targets: Sequence[Target]) -> list[int]:
    """Group of each target: its class, or for 0/1 vectors its rarest positive label (-1: none)."""
    if not targets or isinstance(targets[0], int):
        return [int(t) for t in targets]
    positives = np.asarray(targets, dtype=np.float64).sum(axis=0)
    groups = []
    for target in targets:
        labels = [i for i, v in enumerate(target) if v > 0]
        groups.append(min(labels, key=lambda i: (positives[i], i)) if labels else -1)
    return groups


def split_samples(
    samples: Sequence[Sample], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[Sample]]:
    """Seeded stratified train/val/test split.

    Within each stratum (see `strata`) the samples are shuffled with ``seed``;
    ``round(n * val)`` go to val, ``round(n * test)`` to test, the rest to train
    (fractions are normalised to sum 1). Each split keeps the input order.
    """
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ConfigError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    total = float(sum(fractions))
    rng = np.random.default_rng(seed)
    groups = np.asarray(strata([s.target for s in samples]))
    assigned = [""] * len(samples)
    for group in sorted(set(groups.tolist())):
        members = rng.permutation(np.flatnonzero(groups == group))
        n_val = min(len(members), round(len(members) * fractions[1] / total))
        n_test = min(len(members) - n_val, round(len(members) * fractions[2] / total))
        names = ["val"] * n_val + ["test"] * n_test
        for position, index in enumerate(members):
            assigned[index] = names[position] if position < len(names) else "train"
    return {name: [s for s, a in zip(samples, assigned) if a == name] for name in SPLITS}


def natural_sorted(names: set[str]) -> list[str]:
    """Names sorted with integer names first, in numeric order."""
    return sorted(names, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))


def parse_split(value: str | None, where: str) -> str:
    """Canonical split name of a cell (DataError naming ``where`` if unknown)."""
    name = SPLIT_ALIASES.get((value or "").strip().lower())
    if name is None:
        raise DataError(f"{where}: bad split value {value!r}; expected one of {list(SPLITS)}")
    return name


def raise_missing(missing: Sequence[str], what: str) -> None:
    """Raise DataError listing the first few missing files, if any."""
    if missing:
        shown = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{len(missing)} image file(s) of {what} not found:\n  {shown}{more}")


def read_csv_manifest(
    csv_path: str | Path,
    image_col: str = "image",
    label_col: str = "label",
    split_col: str | None = "split",
    root: str | Path | None = None,
    label_sep: str = "|",
    classes: Sequence[str] | None = None,
    label_cols: Sequence[str] | None = None,
    task: str | None = None,
) -> Manifest:
    """Read a CSV manifest (see the module docstring).

    Args:
        csv_path: the CSV file.
        image_col: column of image paths, relative to ``root``.
        label_col: column of class names (ignored when ``label_cols`` is given).
        split_col: optional column of train/val/test (``None``: no split column).
        root: folder of relative image paths (default: the CSV's folder).
        label_sep: separator of several class names in one cell.
        classes: class names in head order (default: sorted names found).
        label_cols: one 0/1 column per class (multi-label); these name the classes.
        task: force ``multiclass``/``multilabel`` (default: inferred as above).
    """
    path = Path(csv_path)
    header, rows = _read_rows(path)
    needed = [image_col, *(label_cols or [label_col])]
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(f"{path}: missing column(s) {absent}; the header has {header}")
    if label_cols:
        names = _classes_from_columns(label_cols, classes)
        task = check_task(task or "multilabel")
    else:
        task = check_task(task or _infer_task(rows, label_col, label_sep))
        names = _class_names(rows, label_col, label_sep, classes)
    base = Path(root) if root is not None else path.parent
    use_split = split_col is not None and split_col in header
    splits: dict[str, list[Sample]] = {}
    missing = []
    for line, row in rows:
        where = f"{path} line {line}"
        image = (row.get(image_col) or "").strip()
        if not image:
            raise DataError(f"{where} column {image_col!r}: empty image path")
        file = base / image
        if not file.is_file():
            missing.append(f"{file} ({where} column {image_col!r})")
        if label_cols:
            target = tuple(_binary(row.get(c), f"{where} column {c!r}") for c in label_cols)
        else:
            target = _encode(row.get(label_col), names, task, label_sep, f"{where} column {label_col!r}")
        split = parse_split(row.get(split_col), f"{where} column {split_col!r}") if use_split else UNSPLIT
        splits.setdefault(split, []).append(Sample(str(file), target, where))
    raise_missing(missing, str(path))
    return Manifest(splits, names, task)


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        rows = [(reader.line_num, row) for row in reader]
    if not header:
        raise DataError(f"{path}: empty manifest (no header line)")
    if not rows:
        raise DataError(f"{path}: empty manifest (no rows after the header)")
    return header, rows


def _cell_names(cell: str | None, sep: str) -> list[str]:
    return [p.strip() for p in (cell or "").split(sep) if p.strip()]


def _infer_task(rows: Sequence[tuple[int, dict]], column: str, sep: str) -> str:
    multi = any(len(_cell_names(row.get(column), sep)) > 1 for _, row in rows)
    return "multilabel" if multi else "multiclass"


def _class_names(rows: Sequence[tuple[int, dict]], column: str, sep: str, classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return natural_sorted({n for _, row in rows for n in _cell_names(row.get(column), sep)})
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes contain duplicates: {list(classes)}")
    return list(classes)


def _classes_from_columns(label_cols: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    if classes is not None and list(classes) != list(label_cols):
        raise ConfigError(f"classes {list(classes)} differ from label_cols {list(label_cols)}")
    return list(label_cols)


def _binary(value: str | None, where: str) -> float:
    text = (value or "").strip()
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if number not in (0.0, 1.0):
        raise DataError(f"{where}: expected 0 or 1, got {text!r}")
    return number


def _encode(cell: str | None, names: Sequence[str], task: str, sep: str, where: str) -> Target:
    values = _cell_names(cell, sep)
    unknown = [v for v in values if v not in names]
    if unknown:
        raise DataError(f"{where}: unknown label(s) {unknown}; known classes {list(names)}")
    if task == "multilabel":
        return tuple(float(n in values) for n in names)
    if len(values) != 1:
        raise DataError(
            f"{where}: expected one class name, got {cell!r} "
            "(pass task='multilabel' if empty cells mean 'no finding')"
        )
    return names.index(values[0])


def read_image_folder(root: str | Path, classes: Sequence[str] | None = None) -> Manifest:
    """Read ``root/<class>/*`` or ``root/<split>/<class>/*`` (multiclass).

    Image files are found recursively by extension; hidden files are skipped.

    Args:
        root: dataset folder.
        classes: class names in head order (default: sorted folder names).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders = _subfolders(root)
    split_names = [f for f in folders if f.name.lower() in SPLIT_ALIASES]
    if split_names and len(split_names) != len(folders):
        raise DataError(f"{root}: mixes split folders and class folders: {[f.name for f in folders]}")
    if split_names:
        parts = {parse_split(f.name, str(f)): _class_files(f) for f in folders}
    else:
        parts = {UNSPLIT: _class_files(root)}
    found = {name for files in parts.values() for name in files}
    names = natural_sorted(found) if classes is None else list(classes)
    unknown = sorted(found - set(names))
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} not in classes {names}")
    splits = {
        split: [Sample(str(p), names.index(c), str(p.parent)) for c in natural_sorted(set(files)) for p in files[c]]
        for split, files in parts.items()
    }
    if not any(splits.values()):
        raise DataError(f"{root}: no image files found")
    return Manifest(splits, names, "multiclass")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(folder: Path) -> dict[str, list[Path]]:
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and has_image_suffix(p))
    if stray:
        raise DataError(f"{folder}: image files outside a class folder: {stray[:MAX_LISTED]}")
    return {
        sub.name: sorted(
            p for p in sub.rglob("*")
            if p.is_file() and has_image_suffix(p) and not p.name.startswith(".")
        )
        for sub in _subfolders(folder)
    }
