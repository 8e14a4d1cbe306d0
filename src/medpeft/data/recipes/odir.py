"""ODIR-5K (Ocular Disease Intelligent Recognition) in its native layout, as used by MoRA.

Layout: an annotation workbook (``*.xlsx``, first sheet) with columns ``ID``,
``Left-Fundus``, ``Right-Fundus``, ``Left-Diagnostic Keywords``,
``Right-Diagnostic Keywords`` and the 0/1 label columns ``N D G C A H M O``
(other columns such as age and sex are ignored), plus a folder of fundus
photographs named in the ``*-Fundus`` columns.

One record per patient: modality ``image`` = left and right fundus side by side
as one image (``combine="hconcat"``), modality ``text`` =
``"Left_text:<left keywords> Right_text:<right keywords>"`` (a space before
``Right_text`` so words do not fuse), 8 multilabel targets N D G C A H M O.
Split: seeded and stratified, proportional to MoRA's 2781/382/337 (exact on the 3,500 patients).
Train transforms should not flip horizontally (``hflip=0``): a flip swaps the eyes.
"""

from __future__ import annotations

from pathlib import Path

from openpyxl import load_workbook

from medpeft.data.csvfile import Rows, check_columns, raise_missing
from medpeft.data.labels import binary_target
from medpeft.data.records import Record, Source
from medpeft.data.splits import seeded_split
from medpeft.errors import DataError

LABELS = ("N", "D", "G", "C", "A", "H", "M", "O")
SPLIT_SIZES = (2781, 382, 337)
KINDS = {"image": "image", "text": "text"}
ID_COLUMN = "ID"
IMAGE_COLUMNS = ("Left-Fundus", "Right-Fundus")
KEYWORD_COLUMNS = ("Left-Diagnostic Keywords", "Right-Diagnostic Keywords")
IMAGE_DIRS = (
    "ODIR-5K_Training_Dataset",
    "Training Images",
    "ODIR-5K/Training Images",
    "images",
    ".",
)


def compose_text(left: str, right: str) -> str:
    """MoRA's ODIR text from the two eyes' diagnostic keywords."""
    return f"Left_text:{left.strip()} Right_text:{right.strip()}"


def find_annotations(root: Path) -> Path:
    """The first ``*.xlsx`` under ``root`` (sorted), or DataError."""
    found = sorted(root.glob("**/*.xlsx"))
    if not found:
        raise DataError(f"no ODIR annotation workbook (*.xlsx) under {root}")
    return found[0]


def find_image_dir(root: Path) -> Path:
    """The first of `IMAGE_DIRS` under ``root`` that exists."""
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"no ODIR image folder under {root}; looked for {IMAGE_DIRS}")


def read_annotations(path: Path) -> Rows:
    """``(sheet row number, row)`` of the workbook's first sheet, cells as strings (empty -> "").

    Fully empty rows are skipped.
    """
    sheet = load_workbook(path, read_only=True, data_only=True).worksheets[0]
    rows = sheet.iter_rows(values_only=True)
    header = [str(h).strip() if h is not None else "" for h in next(rows, ())]
    check_columns(path, header, [ID_COLUMN, *IMAGE_COLUMNS, *KEYWORD_COLUMNS, *LABELS])
    return [
        (line, {h: "" if v is None else str(v) for h, v in zip(header, row)})
        for line, row in enumerate(rows, start=2)
        if any(v is not None for v in row)
    ]


def load_odir(
    root: str | Path,
    annotations: str | Path | None = None,
    image_dir: str | Path | None = None,
    seed: int = 0,
) -> Source:
    """Records of ODIR-5K, with splits assigned.

    Args:
        root: dataset folder.
        annotations: the workbook (default: first ``*.xlsx`` under ``root``).
        image_dir: the fundus folder (default: first of `IMAGE_DIRS` under ``root``).
        seed: split seed.
    """
    root = Path(root)
    workbook = Path(annotations) if annotations else find_annotations(root)
    images = Path(image_dir) if image_dir else find_image_dir(root)
    rows = read_annotations(workbook)
    records, missing = [], []
    for index, (line, row) in enumerate(rows):
        where = f"{workbook} line {line}"
        names = [row[c].strip() for c in IMAGE_COLUMNS]
        paths = tuple(str(images / name) for name in names)
        missing += [
            f"{where} column {c!r}: {p if name else 'empty cell'}"
            for c, name, p in zip(IMAGE_COLUMNS, names, paths)
            if not name or not Path(p).is_file()
        ]
        text = compose_text(*(row[c] for c in KEYWORD_COLUMNS))
        records.append(
            Record(
                id=row[ID_COLUMN].strip() or str(index),
                values={"image": paths, "text": text},
                target=binary_target(row, LABELS, where),
                where=where,
            )
        )
    raise_missing(missing, str(workbook))
    for record, split in zip(records, seeded_split([r.target for r in records], SPLIT_SIZES, seed)):
        record.split = split
    return Source(
        records, ("image", "text"), dict(KINDS), list(LABELS), "multilabel", {"image": "hconcat"}
    )
