"""Readers for the four public datasets of MeLo (arXiv 2311.08236), in their native layouts.

Each returns a single-image `Source` (modality ``"image"``) with every record in
``train``, ``val`` or ``test``:

* `load_shenzhen`: Shenzhen CXR. Files ``CHNCXR_<id>_<0|1>.png`` anywhere under
  ``root`` (``CXR_png/``, ``images/``...); last digit 0 = normal, 1 = tuberculosis.
  No official split: seeded stratified 70/10/20 (train/val/test).
* `load_blood_cells`: Kaggle BCCD "blood-cells". ``dataset2-master/images/{TRAIN,TEST}/
  <EOSINOPHIL|LYMPHOCYTE|MONOCYTE|NEUTROPHIL>/*.jpeg``. Official TRAIN/TEST; val is a
  seeded stratified 10% of TRAIN (TRAIN holds augmented copies of the same cells, so
  val is optimistic). TEST_SIMPLE is not used.
* `load_chestxray14`: NIH ChestX-ray14. ``Data_Entry_2017.csv`` (or ``_v2020``) with
  ``Image Index`` and ``Finding Labels`` (``|``-joined, ``No Finding`` = all negative),
  official ``train_val_list.txt``/``test_list.txt``, images in ``images/`` or
  ``images_0XX/images/``. 14 labels, multi-label. Val is a seeded 10% of the
  train_val patients (grouped by ``Patient ID``, so no patient is in two splits).
* `load_inbreast`: INbreast. ``INbreast.csv`` (``;``- or ``,``-separated) or
  ``INbreast.xls(x)`` with ``File Name`` and ``Bi-Rads``; images
  ``AllDICOMs/<File Name>_*.dcm``. Binary: BI-RADS 1, 2, 3 = benign; 4 (4a/4b/4c),
  5, 6 = malignant. No official split and no usable patient id: seeded stratified
  70/10/20 over images.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medpeft.data.csvfile import MAX_LISTED, check_columns, raise_missing, read_csv_rows
from medpeft.data.imageio import has_image_suffix
from medpeft.data.records import IMAGE_MODALITY, Record, Source, Target, image_source
from medpeft.data.splits import DEFAULT_FRACTIONS, stratified_split
from medpeft.errors import DataError

SHENZHEN_CLASSES = ("normal", "tuberculosis")
BLOOD_CELL_CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
CHESTXRAY14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
CHESTXRAY14_NORMAL = "No Finding"
INBREAST_CLASSES = ("benign", "malignant")
VAL_FRACTION = 0.1

_SHENZHEN_NAME = re.compile(r"^CHNCXR_\d+_([01])\.png$", re.IGNORECASE)
_BLOOD_CELL_DIRS = (
    "", "images", "dataset2-master/images", "dataset2-master/dataset2-master/images"
)
Rows = list[tuple[str, dict[str, str]]]


def _record(path: Path | str, target: Target, where: str, split: str | None = None) -> Record:
    """A single-image record whose id is its file path."""
    return Record(str(path), {IMAGE_MODALITY: (str(path),)}, target, split, where)


def _stratified(
    records: list[Record], fractions: Sequence[float], seed: int
) -> list[Record]:
    """``records`` with a seeded stratified split assigned."""
    names = stratified_split([r.target for r in records], fractions, seed)
    for record, name in zip(records, names):
        record.split = name
    return records


def _folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    return root


def _first_file(root: Path, names: Sequence[str]) -> Path:
    path = next((root / n for n in names if (root / n).is_file()), None)
    if path is None:
        raise DataError(f"{root}: none of {list(names)} found")
    return path


def load_shenzhen(
    root: str | Path, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Source:
    """Shenzhen chest X-rays, normal vs tuberculosis (see the module docstring)."""
    root = _folder(root)
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("CHNCXR_*")):
        if not (path.is_file() and _SHENZHEN_NAME.match(path.name)):
            continue
        if path.name in found:
            raise DataError(f"Shenzhen image {path.name} found twice: {found[path.name]}, {path}")
        found[path.name] = path
    if not found:
        raise DataError(f"{root}: no Shenzhen images CHNCXR_<id>_<0|1>.png (e.g. in CXR_png/)")
    records = [
        _record(p, int(_SHENZHEN_NAME.match(name).group(1)), str(p))
        for name, p in sorted(found.items())
    ]
    return image_source(_stratified(records, fractions, seed), SHENZHEN_CLASSES, "multiclass")


def load_blood_cells(
    root: str | Path, val_fraction: float = VAL_FRACTION, seed: int = 0
) -> Source:
    """Kaggle BCCD blood cell images, 4 classes (see the module docstring)."""
    root = _folder(root)
    candidates = [root / d for d in _BLOOD_CELL_DIRS]
    images = next((d for d in candidates if (d / "TRAIN").is_dir() and (d / "TEST").is_dir()), None)
    if images is None:
        raise DataError(f"{root}: no TRAIN/ and TEST/ (expected dataset2-master/images/TRAIN)")
    fractions = (1 - val_fraction, val_fraction, 0)
    train = _stratified(_blood_cell_split(images / "TRAIN"), fractions, seed)
    test = _blood_cell_split(images / "TEST", "test")
    return image_source(train + test, BLOOD_CELL_CLASSES, "multiclass")


def _blood_cell_split(folder: Path, split: str | None = None) -> list[Record]:
    folders = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    extra = sorted(set(folders) - set(BLOOD_CELL_CLASSES))
    if extra:
        raise DataError(f"{folder}: unknown class folder(s) {extra}; expected {BLOOD_CELL_CLASSES}")
    records = []
    for index, name in enumerate(BLOOD_CELL_CLASSES):
        class_dir = folder / name
        files = sorted(class_dir.glob("*")) if class_dir.is_dir() else []
        files = [p for p in files if p.is_file() and has_image_suffix(p) and p.name[0] != "."]
        if not files:
            raise DataError(f"{class_dir}: missing or holds no images")
        records += [_record(p, index, str(class_dir), split) for p in files]
    return records


def load_chestxray14(
    root: str | Path, val_fraction: float = VAL_FRACTION, seed: int = 0
) -> Source:
    """NIH ChestX-ray14, 14 labels multi-label, official test split (see the module docstring)."""
    root = _folder(root)
    table = _first_file(root, ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"))
    test_ids = _read_list(root / "test_list.txt")
    train_ids = _read_list(root / "train_val_list.txt")
    images = _index_chestxray14(root)
    train, test, patients, missing, unlisted = [], [], {}, [], []
    for where, row in _read_csv(table, ("Image Index", "Finding Labels")):
        name = row["Image Index"].strip()
        if name not in images:
            missing.append(f"{name} ({where})")
        path = str(images.get(name, root / "images" / name))
        record = _record(path, _chestxray14_target(row["Finding Labels"], where), where)
        if name in test_ids:
            record.split = "test"
            test.append(record)
        elif name in train_ids:
            train.append(record)
            patients[path] = (row.get("Patient ID") or name.split("_")[0]).strip()
        else:
            unlisted.append(name)
    raise_missing(missing, f"{table} (looked in images/ and images_*/images/)")
    if unlisted:
        raise DataError(
            f"{table}: {len(unlisted)} image(s) in neither train_val_list.txt nor test_list.txt,"
            f" e.g. {unlisted[:MAX_LISTED]}"
        )
    val_patients = _pick_groups(sorted(set(patients.values())), val_fraction, seed)
    for record in train:
        record.split = "val" if patients[record.id] in val_patients else "train"
    return image_source(train + test, CHESTXRAY14_LABELS, "multilabel")


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise DataError(f"official split file not found: {path}")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _index_chestxray14(root: Path) -> dict[str, Path]:
    folders = [root / "images", *sorted(root.glob("images_*/images")), *root.glob("images_*")]
    index: dict[str, Path] = {}
    for folder in (f for f in folders if f.is_dir()):
        for path in folder.iterdir():
            if path.suffix.lower() == ".png":
                index.setdefault(path.name, path)
    return index


def _chestxray14_target(cell: str, where: str) -> tuple[float, ...]:
    names = {n.strip() for n in cell.split("|") if n.strip()} - {CHESTXRAY14_NORMAL}
    unknown = sorted(names - set(CHESTXRAY14_LABELS))
    if unknown:
        raise DataError(f"{where} column 'Finding Labels': unknown label(s) {unknown}")
    return tuple(float(n in names) for n in CHESTXRAY14_LABELS)


def _pick_groups(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
    order = np.random.default_rng(seed).permutation(len(groups))
    return {groups[i] for i in order[: round(len(groups) * fraction)]}


def _read_csv(path: Path, needed: Sequence[str], delimiter: str = ",") -> Rows:
    header, rows = read_csv_rows(path, delimiter)
    check_columns(path, header, needed)
    return [(f"{path} line {line}", row) for line, row in rows]


def load_inbreast(
    root: str | Path, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0
) -> Source:
    """INbreast mammograms, benign (BI-RADS 1-3) vs malignant (4-6) (see the module docstring)."""
    root = _folder(root)
    table = _first_file(root, ("INbreast.csv", "INbreast.xlsx", "INbreast.xls"))
    dicoms = _index_inbreast(root / "AllDICOMs")
    records, missing = [], []
    for where, row in _read_inbreast_table(table):
        name = re.sub(r"\.0$", "", row.get("filename", ""))
        if not name:
            raise DataError(f"{where} column 'File Name': empty")
        if name not in dicoms:
            missing.append(f"AllDICOMs/{name}_*.dcm ({where})")
        path = str(dicoms.get(name, root / "AllDICOMs" / name))
        records.append(_record(path, _birads_class(row.get("birads"), where), where))
    raise_missing(missing, str(table))
    return image_source(_stratified(records, fractions, seed), INBREAST_CLASSES, "multiclass")


def _index_inbreast(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"INbreast DICOM folder not found: {folder}")
    index: dict[str, Path] = {}
    for path in sorted(folder.glob("*.dcm")):
        prefix = path.name.split("_")[0]
        if prefix in index:
            raise DataError(f"two DICOM files for File Name {prefix}: {index[prefix]}, {path}")
        index[prefix] = path
    return index


def _birads_class(value: str | None, where: str) -> int:
    match = re.match(r"\s*([1-6])(\.0)?[a-c]?\s*$", str(value or ""), re.IGNORECASE)
    if match is None:
        raise DataError(f"{where} column 'Bi-Rads': expected 1-6 (4a/4b/4c allowed), got {value!r}")
    return int(int(match.group(1)) >= 4)


def _normalise(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(header).lower())


def _read_inbreast_table(path: Path) -> Rows:
    """Rows with normalised headers (``File Name`` -> ``filename``); fully empty rows skipped."""
    if path.suffix.lower() == ".csv":
        first = path.read_text(encoding="utf-8-sig").splitlines()[:1] or [""]
        rows = _read_csv(path, (), delimiter=max(";,\t", key=first[0].count))
    else:
        rows = _read_excel(path)
    rows = [
        (where, {_normalise(k): (v or "").strip() for k, v in row.items() if k is not None})
        for where, row in rows
    ]
    rows = [(where, row) for where, row in rows if any(row.values())]
    if not rows or not {"filename", "birads"} <= set(rows[0][1]):
        raise DataError(f"{path}: needs columns 'File Name' and 'Bi-Rads' and at least one row")
    return rows


def _read_excel(path: Path) -> Rows:
    try:
        import pandas

        frame = pandas.read_excel(path, dtype=str).fillna("")
    except ImportError as err:
        raise DataError(
            f"reading {path} needs pandas with xlrd (.xls) or openpyxl (.xlsx) ({err}): "
            "pip install 'medpeft[medical]', "
            "or save it as INbreast.csv"
        ) from err
    except Exception as err:  # a corrupt or mislabelled spreadsheet
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    records = frame.to_dict("records")
    return [(f"{path} row {i + 2}", row) for i, row in enumerate(records)]
