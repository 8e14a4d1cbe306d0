"""Single-modality manifests: which image files, which labels, which split.

`read_csv_manifest` (one row per image; class names in one column, several joined
by ``label_sep`` making the task multi-label with an empty cell = all negative, or
one 0/1 column per class; optional train/val/test column) and `read_image_folder`
(``root/<class>/...`` or ``root/<split>/<class>/...``) both give a `Manifest`.
Unsplit samples sit under ``"all"`` until `Manifest.with_splits` splits them.
Problems raise `DataError` naming the file, line and column; no row is dropped.

The CSV, label and split helpers here also serve the multimodal manifest
(`medpeft.data.multimodal_manifest`) and the dataset recipes.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpeft.data.imageio import has_image_suffix
from medpeft.errors import ConfigError, DataError
from medpeft.tasks import check_task

SPLITS = ("train", "val", "test")
UNSPLIT = "all"
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}
MAX_LISTED = 5

Target = int | tuple[float, ...]
Rows = list[tuple[int, dict[str, str]]]  # (line number, column -> cell)


@dataclass(frozen=True)
class Sample:
    """One image file, its target and its origin for error messages."""

    path: str
    target: Target  # class index (multiclass) or 0/1 tuple in class order (multilabel)
    where: str = ""  # e.g. ``labels.csv line 7``


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
        """Number of classes (outputs of the head)."""
        return len(self.classes)

    def split(self, name: str) -> list[Sample]:
        """Samples of one split (DataError if the manifest has no such split)."""
        if name not in self.splits:
            raise DataError(f"no split {name!r} in the manifest; it has {list(self.splits)}")
        return self.splits[name]

    def with_splits(
        self, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
    ) -> Manifest:
        """This manifest if already split, else a seeded stratified train/val/test split."""
        if UNSPLIT not in self.splits:
            return self
        parts = split_samples(self.splits[UNSPLIT], fractions, seed)
        return Manifest(parts, self.classes, self.task)


def strata(targets: Sequence[Target]) -> list[int]:
    """Group of each target: its class, or for 0/1 vectors its rarest positive label (-1: none)."""
    if not targets or isinstance(targets[0], int):
        return [int(t) for t in targets]
    counts = np.asarray(targets, dtype=np.float64).sum(axis=0)
    return [
        min((i for i, v in enumerate(t) if v > 0), key=lambda i: counts[i], default=-1)
        for t in targets
    ]


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``fractions`` as 3 floats (train, val, test), each >= 0 with a positive sum, or ConfigError."""
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise ConfigError(f"fractions must be 3 numbers >= 0 (train, val, test), got {fractions}")
    return tuple(float(f) for f in fractions)


def holdout_fractions(val_fraction: float, test_fraction: float) -> tuple[float, float, float]:
    """Train/val/test fractions from the config's ``data.val_fraction`` and ``data.test_fraction``."""
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction > 1:
        raise ConfigError(
            "data.val_fraction, data.test_fraction: need two numbers >= 0 summing to at most 1, "
            f"got {val_fraction} and {test_fraction}"
        )
    return (max(0.0, 1.0 - val_fraction - test_fraction), val_fraction, test_fraction)


def split_samples(
    samples: Sequence[Sample], fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> dict[str, list[Sample]]:
    """Seeded stratified train/val/test split.

    Within each stratum (see `strata`) the samples are shuffled with ``seed``;
    ``round(n * val)`` go to val, ``round(n * test)`` to test, the rest to train
    (fractions are normalised to sum 1). Each split keeps the input order.
    (`medpeft.data.multimodal_manifest.seeded_split` is the unstratified split
    with exact counts that the multimodal recipes use.)
    """
    fractions = check_fractions(fractions)
    total = sum(fractions)
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
    """Raise DataError listing the first few missing files (with their rows), if any."""
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
    header, rows = read_csv_rows(path)
    needed = [image_col, *(label_cols or [label_col])]
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(f"{path}: missing column(s) {absent}; the header has {header}")
    if label_cols:
        if classes is not None and list(classes) != list(label_cols):
            raise ConfigError(f"classes {list(classes)} differ from label_cols {list(label_cols)}")
        names, task = list(label_cols), check_task(task or "multilabel")
    else:
        task, names = _task_and_classes(rows, label_col, label_sep, task, classes)
    base = Path(root) if root is not None else path.parent
    use_split = split_col is not None and split_col in header
    splits = _empty_splits(use_split)
    missing = []
    for line, row in rows:
        where = f"{path} line {line}"
        image = (row.get(image_col) or "").strip()
        if not image:
            raise DataError(f"{where} column {image_col!r}: empty image path")
        file = base / image
        if not file.is_file():
            missing.append(f"{where} column {image_col!r}: {file}")
        if label_cols:
            target = tuple(parse_binary(row.get(c), f"{where} column {c!r}") for c in label_cols)
        else:
            cell = f"{where} column {label_col!r}"
            target = encode_labels(row.get(label_col), names, task, label_sep, cell)
        split = UNSPLIT
        if use_split:
            split = parse_split(row.get(split_col), f"{where} column {split_col!r}")
        splits[split].append(Sample(str(file), target, where))
    raise_missing(missing, str(path))
    return Manifest(splits, names, task)


def read_csv_rows(path: str | Path, delimiter: str = ",") -> tuple[list[str], Rows]:
    """Header (names stripped) and ``(line number, row)`` pairs of a CSV file.

    The line number is where the row starts (a quoted cell may span lines);
    blank lines are skipped and a short row's absent cells read as ``""``.
    DataError naming the file (and line) if it is absent, has no header or no
    rows, repeats a column name, or a row has filled cells beyond the header's
    columns (a delimiter inside an unquoted cell?).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            raise DataError(f"{path}: column name(s) {repeated} appear more than once")
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells:
                continue
            extra = [c for c in cells[len(header):] if c.strip()]
            if extra:
                raise DataError(
                    f"{path} line {line}: {len(extra)} cell(s) beyond the header's "
                    f"{len(header)} columns: {extra[:MAX_LISTED]} (quote cells holding "
                    f"{delimiter!r})"
                )
            cells += [""] * (len(header) - len(cells))
            rows.append((line, dict(zip(header, cells))))
    if not header or not rows:
        raise DataError(f"{path}: empty manifest (no header line or no rows)")
    return header, rows


def split_cell(cell: str | None, sep: str = "|") -> list[str]:
    """The non-blank names in a cell of ``sep``-joined names, stripped."""
    return [p.strip() for p in (cell or "").split(sep) if p.strip()]


def label_names(seen: Iterable[str], classes: Sequence[str] | None = None) -> list[str]:
    """Label names in head order: ``classes`` if given, else the names ``seen``, sorted."""
    if classes is None:
        return natural_sorted(set(seen))
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes contain duplicates: {list(classes)}")
    return list(classes)


def _task_and_classes(
    rows: Rows, column: str, sep: str, task: str | None, classes: Sequence[str] | None
) -> tuple[str, list[str]]:
    cells = [split_cell(row.get(column), sep) for _, row in rows]
    task = task or ("multilabel" if any(len(c) > 1 for c in cells) else "multiclass")
    return check_task(task), label_names((n for c in cells for n in c), classes)


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


def read_image_folder(root: str | Path, classes: Sequence[str] | None = None) -> Manifest:
    """Read ``root/<class>/*`` or ``root/<split>/<class>/*`` as a multiclass manifest.

    Images are found recursively by extension, hidden files skipped; ``classes``
    gives the head order (default: sorted folder names).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders = _subfolders(root)
    split_dirs = [f for f in folders if f.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(folders):
        names = [f.name for f in folders]
        raise DataError(f"{root}: mixes split folders and class folders: {names}")
    groups = [(parse_split(f.name, str(f)), f) for f in split_dirs] or [(UNSPLIT, root)]
    found = [(split, sub) for split, folder in groups for sub in _subfolders(folder, False)]
    if not found:
        raise DataError(f"{root}: no class folders with images")
    seen = {sub.name for _, sub in found}
    names = label_names(seen, classes)
    unknown = sorted(seen - set(names))
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} not in classes {names}")
    splits = _empty_splits(bool(split_dirs))
    for split, sub in found:
        target = names.index(sub.name)
        splits[split] += [Sample(str(p), target, str(sub)) for p in _image_files(sub)]
    return Manifest(splits, names, "multiclass")


def _empty_splits(split: bool) -> dict[str, list[Sample]]:
    return {name: [] for name in SPLITS} if split else {UNSPLIT: []}


def _subfolders(folder: Path, images_allowed: bool = True) -> list[Path]:
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and has_image_suffix(p))
    if stray and not images_allowed:
        raise DataError(f"{folder}: image files outside a class folder: {stray[:MAX_LISTED]}")
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and has_image_suffix(p) and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"{folder}: class folder holds no image files")
    return files
