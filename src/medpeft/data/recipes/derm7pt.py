"""Derm7pt (clinical + dermoscopic images of skin lesions), 5 diagnosis classes as in the EI paper.

Layout under ``root`` (the release folder): ``meta/meta.csv`` with ``diagnosis``,
``clinic`` and ``derm`` (image paths relative to ``images/``), and the official split
``meta/{train,valid,test}_indexes.csv`` (column ``indexes``: 0-based rows of
``meta.csv``; 413 / 203 / 395 cases).

One record per case: modality ``clinic`` (clinical photograph) and ``derm``
(dermoscopic image), in that order (``meta.csv``'s). Classes, as the Derm7pt authors
group the infrequent ones and the EI code's ``mapping_derm7pt.json`` orders them:
``BCC`` (basal cell carcinoma), ``NEV`` (every nevus), ``MEL`` (every melanoma),
``SK`` (seborrheic keratosis), ``MISC`` (dermatofibroma, lentigo, melanosis,
miscellaneous, vascular lesion).
"""

from __future__ import annotations

import logging
from pathlib import Path

from medpeft.data.csvfile import check_columns, raise_missing, read_csv_rows
from medpeft.data.records import Record, Source
from medpeft.errors import DataError

log = logging.getLogger(__name__)

CLASSES = ("BCC", "NEV", "MEL", "SK", "MISC")
MODALITIES = ("clinic", "derm")
DIAGNOSES = {
    "basal cell carcinoma": "BCC",
    **dict.fromkeys(
        ("nevus", "blue nevus", "clark nevus", "combined nevus", "congenital nevus", "dermal nevus",
         "recurrent nevus", "reed or spitz nevus"),
        "NEV",
    ),
    **dict.fromkeys(
        ("melanoma", "melanoma (in situ)", "melanoma (less than 0.76 mm)", "melanoma (0.76 to 1.5 mm)",
         "melanoma (more than 1.5 mm)", "melanoma metastasis"),
        "MEL",
    ),
    "seborrheic keratosis": "SK",
    **dict.fromkeys(
        ("dermatofibroma", "lentigo", "melanosis", "miscellaneous", "vascular lesion"), "MISC"
    ),
}
SPLIT_FILES = {"train": "train_indexes.csv", "val": "valid_indexes.csv", "test": "test_indexes.csv"}


def load_derm7pt(root: str | Path, seed: int = 0) -> Source:
    """Records of Derm7pt with the official split (``seed`` is unused: the split is fixed)."""
    root = Path(root)
    meta = root / "meta" / "meta.csv"
    header, rows = read_csv_rows(meta)
    check_columns(meta, header, ("diagnosis", "clinic", "derm"))
    splits = _official_splits(root / "meta", len(rows))
    records, missing = [], []
    for index, (line, row) in enumerate(rows):
        where = f"{meta} line {line}"
        if index not in splits:
            continue
        values = {m: (str(root / "images" / row[m].strip()),) for m in MODALITIES}
        missing += [f"{p} ({where})" for (p,) in values.values() if not Path(p).is_file()]
        diagnosis = row["diagnosis"].strip().lower()
        if diagnosis not in DIAGNOSES:
            raise DataError(f"{where} column 'diagnosis': unknown diagnosis {row['diagnosis']!r}")
        target = CLASSES.index(DIAGNOSES[diagnosis])
        case = row.get("case_num", "").strip() or str(index)
        records.append(Record(case, values, target, splits[index], where))
    raise_missing(missing, str(meta))
    if len(records) < len(rows):
        log.warning("Derm7pt: %d case(s) of meta.csv in no official split skipped", len(rows) - len(records))
    return Source(records, MODALITIES, dict.fromkeys(MODALITIES, "image"), list(CLASSES), "multiclass")


def _official_splits(folder: Path, num_rows: int) -> dict[int, str]:
    """Row index of ``meta.csv`` -> split, from the official index files."""
    splits: dict[int, str] = {}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        header, rows = read_csv_rows(path)
        check_columns(path, header, ("indexes",))
        for line, row in rows:
            cell = row["indexes"].strip()
            if not cell.isdigit() or int(cell) >= num_rows:
                raise DataError(f"{path} line {line}: {cell!r} is not a row of meta.csv (0..{num_rows - 1})")
            if int(cell) in splits:
                raise DataError(f"{path} line {line}: row {cell} is already in the {splits[int(cell)]} split")
            splits[int(cell)] = split
    return splits
