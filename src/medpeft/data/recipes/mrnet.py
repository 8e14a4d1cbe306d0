"""MRNet (knee MRI, three views, three labels), as used by the EI paper (arXiv 2603.17514).

Layout under ``root`` (``MRNet-v1.0``): volumes ``{train,valid}/{axial,coronal,sagittal}/<id>.npy``
(``(slices, 256, 256)`` uint8) and label tables ``{train,valid}-{abnormal,meniscus,acl}.csv``
(no header; ``<id>,<0|1>`` per line).

One record per knee: modalities ``axial``, ``coronal``, ``sagittal`` (the EI code's
view order), each one volume read as ``slices`` evenly spaced slices (default 4;
grey repeated to three channels; jittered within their spacing in training, as the
EI code does). Labels ``abnormal``, ``meniscus``, ``acl`` (the order of the EI
``mapping_mrnet.json``), multi-label; a normal knee has none.
Split: the official ``valid`` set (120 knees) is the test split; a seeded, stratified
``val_fraction`` of the official ``train`` set is validation (exact count: 113 of the
1,130 knees, as many as the EI code's ``mrnet_train_val`` list).
"""

from __future__ import annotations

import csv
from pathlib import Path

from medpeft.data.csvfile import raise_missing
from medpeft.data.records import Record, Source
from medpeft.data.splits import seeded_split
from medpeft.errors import DataError

LABELS = ("abnormal", "meniscus", "acl")
VIEWS = ("axial", "coronal", "sagittal")
SLICES = 4
VAL_FRACTION = 0.1
OFFICIAL = {"train": "train", "valid": "test"}


def load_mrnet(
    root: str | Path, seed: int = 0, slices: int = SLICES, val_fraction: float = VAL_FRACTION
) -> Source:
    """Records of MRNet with splits assigned (see the module docstring).

    Args:
        root: The ``MRNet-v1.0`` folder.
        seed: Seed of the validation draw from the official train set.
        slices: Slices read from each view's volume.
        val_fraction: Share of the official train set used for validation.
    """
    root = Path(root)
    records, missing = [], []
    for folder, split in OFFICIAL.items():
        labels = [_read_labels(root / f"{folder}-{name}.csv") for name in LABELS]
        for case in sorted(labels[0]):
            where = f"{root / f'{folder}-abnormal.csv'} (case {case})"
            values = {v: (str(root / folder / v / f"{case}.npy"),) for v in VIEWS}
            missing += [f"{p} ({where})" for (p,) in values.values() if not Path(p).is_file()]
            target = tuple(float(_label(table, case, name, root, folder)) for table, name in zip(labels, LABELS))
            records.append(Record(f"{folder}/{case}", values, target, split, where))
    raise_missing(missing, str(root))
    train = [r for r in records if r.split == "train"]
    fractions = (1 - val_fraction, val_fraction, 0.0)
    for record, split in zip(train, seeded_split([r.target for r in train], fractions, seed)):
        record.split = split
    kinds = dict.fromkeys(VIEWS, "image")
    return Source(records, VIEWS, kinds, list(LABELS), "multilabel", dict.fromkeys(VIEWS, f"slices:{slices}"))


def _read_labels(path: Path) -> dict[str, int]:
    """``{case id: 0|1}`` of one header-less MRNet label table."""
    if not path.is_file():
        raise DataError(f"MRNet label table not found: {path}")
    table: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) != 2 or row[1].strip() not in ("0", "1"):
                raise DataError(f"{path} line {line}: expected '<case id>,<0|1>', got {','.join(row)!r}")
            table[row[0].strip()] = int(row[1])
    if not table:
        raise DataError(f"{path}: no cases")
    return table


def _label(table: dict[str, int], case: str, name: str, root: Path, folder: str) -> int:
    if case not in table:
        raise DataError(f"{root / f'{folder}-{name}.csv'}: no line for case {case}")
    return table[case]
