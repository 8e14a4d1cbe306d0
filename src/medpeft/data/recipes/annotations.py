"""The public EI code's annotation lists: ``m0,m1[,m2]<TAB>label[,label]`` plus ``mapping_*.json``.

One line per sample: the image cells of the modalities, comma-separated, in
modality order; a cell may list several files separated by spaces (the OCT
B-scans of one MMC-AMD eye); then a tab and the sample's labels, comma-separated
(empty: no label, e.g. a normal MRNet knee). Paths are relative to the image root.
``mapping_<dataset>.json`` maps each label name to its output index
(``{"no_amd": 0, "dry_amd": 1, ...}``). The EI repository keeps one folder per list,
``datasplit/<dataset>_<split>/anno.txt``; `find_lists` finds them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from medpeft.data.csvfile import raise_missing
from medpeft.data.labels import encode_labels
from medpeft.data.records import Record, Source
from medpeft.errors import DataError

ANNOTATION_FILE = "anno.txt"


def read_mapping(path: str | Path) -> list[str]:
    """Label names in output order from a ``mapping_*.json`` (indices must be 0..C-1)."""
    path = Path(path)
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read label mapping {path}: {err}") from err
    if not isinstance(mapping, dict) or sorted(mapping.values()) != list(range(len(mapping))):
        raise DataError(f"{path}: expected {{label: index}} with indices 0..C-1, got {mapping!r}")
    return sorted(mapping, key=mapping.get)


def find_lists(folder: str | Path, dataset: str, splits: Mapping[str, str]) -> dict[str, Path] | None:
    """``{split: <folder>/<dataset>_<name>/anno.txt}`` when every list exists, else None.

    Args:
        folder: The EI ``datasplit`` folder.
        dataset: The lists' prefix (``mmc-amd``, ``derm7pt``, ``mrnet``).
        splits: medpeft split -> the list's name (``{"train": "train", "val": "val", ...}``).
    """
    lists = {split: Path(folder) / f"{dataset}_{name}" / ANNOTATION_FILE for split, name in splits.items()}
    return lists if all(p.is_file() for p in lists.values()) else None


def read_annotations(
    path: str | Path,
    image_root: str | Path,
    modalities: Sequence[str],
    labels: Sequence[str],
    task: str,
    split: str | None = None,
) -> list[Record]:
    """The samples of one annotation list (missing image files listed together)."""
    path, image_root = Path(path), Path(image_root)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read annotation list {path}: {err}") from err
    records, missing = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        images, _, label_cell = line.rstrip("\r\n").partition("\t")
        cells = images.split(",")
        if len(cells) != len(modalities):
            raise DataError(f"{where}: {len(cells)} image cell(s) for the modalities {list(modalities)}")
        values = {m: tuple(str(image_root / f) for f in cell.split()) for m, cell in zip(modalities, cells)}
        missing += [f"{p} ({where})" for files in values.values() for p in files if not Path(p).is_file()]
        target = encode_labels(label_cell, labels, task, ",", where)
        records.append(Record(images.strip(), values, target, split, where))
    if not records:
        raise DataError(f"{path}: no samples")
    raise_missing(missing, str(path))
    return records


def load_annotations(
    image_root: str | Path,
    lists: Mapping[str, str | Path],
    mapping: str | Path,
    modalities: Sequence[str],
    task: str,
    combine: Mapping[str, str] | None = None,
) -> Source:
    """A `Source` from EI annotation lists, one per split.

    Args:
        image_root: The folder the lists' paths are relative to.
        lists: ``train``/``val``/``test`` -> annotation list.
        mapping: The ``mapping_*.json`` of the label names.
        modalities: Names of the image cells, in line order.
        task: ``multiclass`` (one label per line) or ``multilabel`` (any number).
        combine: How several files of a modality combine (`medpeft.data.dataset`).
    """
    labels = read_mapping(mapping)
    records = [
        record
        for split, path in lists.items()
        for record in read_annotations(path, image_root, modalities, labels, task, split)
    ]
    kinds = dict.fromkeys(modalities, "image")
    return Source(records, tuple(modalities), kinds, labels, task, dict(combine or {}))
