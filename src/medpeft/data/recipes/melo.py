"""Readers for the four public datasets of MeLo (arXiv 2311.08236), in their native layouts.

Each returns a `Manifest` with ``train``/``val``/``test`` splits:

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

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medpeft.data.imageio import has_image_suffix
from medpeft.data.manifest import (
    DEFAULT_FRACTIONS,
    MAX_LISTED,
    Manifest,
    Sample,
    raise_missing,
    split_samples,
)
from medpeft.errors import DataError

SHENZHEN_CLASSES = ("normal", "tuberculosis")
BLOOD_CELL_CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
CHESTXRAY14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
CHESTXRAY14_NORMAL = "No Finding"
INBREAST_CLASSES = ("benign", "malignant")
VAL_FRACTION = 0.1

_SHENZHEN_NAME = re.compile(r"^CHNCXR_\d+_([01])\.png$", re.IGNORECASE)
_BLOOD_CELL_DIRS = ("", "images", "dataset2-master/images", "dataset2-master/dataset2-master/images")


def _folder(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    return root


def _val_from_train(train: Sequence[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    parts = split_samples(train, (1.0 - val_fraction, val_fraction, 0.0), seed)
    return {"train": parts["train"], "val": parts["val"]}


def load_shenzhen(root: str | Path, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> Manifest:
    """Shenzhen chest X-rays, normal vs tuberculosis (see the module docstring)."""
    root = _folder(root)
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("CHNCXR_*")):
        if not (path.is_file() and _SHENZHEN_NAME.match(path.name)):
            continue
        if path.name in found:
            raise DataError(f"Shenzhen image {path.name} found twice: {found[path.name]} and {path}")
        found[path.name] = path
    if not found:
        raise DataError(f"{root}: no Shenzhen images named CHNCXR_<id>_<0|1>.png (e.g. in CXR_png/)")
    samples = [
        Sample(str(p), int(_SHENZHEN_NAME.match(name).group(1)), str(p))
        for name, p in sorted(found.items())
    ]
    return Manifest(split_samples(samples, fractions, seed), list(SHENZHEN_CLASSES), "multiclass")


def load_blood_cells(root: str | Path, val_fraction: float = VAL_FRACTION, seed: int = 0) -> Manifest:
    """Kaggle BCCD blood cell images, 4 classes (see the module docstring)."""
    root = _folder(root)
    images = next(
        (root / d for d in _BLOOD_CELL_DIRS if (root / d / "TRAIN").is_dir() and (root / d / "TEST").is_dir()),
        None,
    )
    if images is None:
        raise DataError(f"{root}: no TRAIN/ and TEST/ folders (expected dataset2-master/images/TRAIN, .../TEST)")
    train = _blood_cell_split(images / "TRAIN")
    return Manifest(
        {**_val_from_train(train, val_fraction, seed), "test": _blood_cell_split(images / "TEST")},
        list(BLOOD_CELL_CLASSES),
        "multiclass",
    )


def _blood_cell_split(folder: Path) -> list[Sample]:
    extra = sorted(
        p.name for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in BLOOD_CELL_CLASSES
    )
    if extra:
        raise DataError(f"{folder}: unknown class folder(s) {extra}; expected {list(BLOOD_CELL_CLASSES)}")
    samples = []
    for index, name in enumerate(BLOOD_CELL_CLASSES):
        class_dir = folder / name
        files = sorted(
            p for p in class_dir.glob("*")
            if p.is_file() and has_image_suffix(p) and not p.name.startswith(".")
        ) if class_dir.is_dir() else []
        if not files:
            raise DataError(f"{class_dir}: missing or holds no images")
        samples += [Sample(str(p), index, str(class_dir)) for p in files]
    return samples


def load_chestxray14(root: str | Path, val_fraction: float = VAL_FRACTION, seed: int = 0) -> Manifest:
    """NIH ChestX-ray14, 14 labels multi-label, official test split (see the module docstring)."""
    root = _folder(root)
    table = next((root / n for n in ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv") if (root / n).is_file()), None)
    if table is None:
        raise DataError(f"{root}: no Data_Entry_2017.csv (or Data_Entry_2017_v2020.csv)")
    test_ids = _read_list(root / "test_list.txt")
    train_ids = _read_list(root / "train_val_list.txt")
    images = _index_chestxray14(root)
    train, test, patients, missing, unlisted = [], [], {}, [], []
    for line, row in _read_csv(table, ("Image Index", "Finding Labels")):
        where = f"{table} line {line}"
        name = row["Image Index"].strip()
        path = images.get(name)
        if path is None:
            missing.append(f"{name} ({where})")
        sample = Sample(str(path or root / "images" / name), _chestxray14_target(row["Finding Labels"], where), where)
        if name in test_ids:
            test.append(sample)
        elif name in train_ids:
            train.append(sample)
            patients[sample.path] = (row.get("Patient ID") or name.split("_")[0]).strip()
        else:
            unlisted.append(name)
    raise_missing(missing, f"{table} (looked in images/ and images_*/images/)")
    if unlisted:
        raise DataError(f"{table}: {len(unlisted)} image(s) in neither train_val_list.txt nor "
                        f"test_list.txt, e.g. {unlisted[:MAX_LISTED]}")
    val_patients = _pick_groups(sorted(set(patients.values())), val_fraction, seed)
    splits = {
        "train": [s for s in train if patients[s.path] not in val_patients],
        "val": [s for s in train if patients[s.path] in val_patients],
        "test": test,
    }
    return Manifest(splits, list(CHESTXRAY14_LABELS), "multilabel")


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise DataError(f"official split file not found: {path}")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _index_chestxray14(root: Path) -> dict[str, Path]:
    folders = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    index: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
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


def _read_csv(path: Path, needed: Sequence[str], delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
        rows = [(reader.line_num, row) for row in reader]
    absent = [c for c in needed if c not in reader.fieldnames]
    if absent:
        raise DataError(f"{path}: missing column(s) {absent}; the header has {reader.fieldnames}")
    return rows


def load_inbreast(root: str | Path, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> Manifest:
    """INbreast mammograms, benign (BI-RADS 1-3) vs malignant (4-6) (see the module docstring)."""
    root = _folder(root)
    table = next((root / n for n in ("INbreast.csv", "INbreast.xlsx", "INbreast.xls") if (root / n).is_file()), None)
    if table is None:
        raise DataError(f"{root}: no INbreast.csv, INbreast.xlsx or INbreast.xls")
    dicoms = _index_inbreast(root / "AllDICOMs")
    samples, missing = [], []
    for where, row in _read_inbreast_table(table):
        name = re.sub(r"\.0$", "", row.get("filename", "").strip())
        if not name:
            raise DataError(f"{where} column 'File Name': empty")
        path = dicoms.get(name)
        if path is None:
            missing.append(f"AllDICOMs/{name}_*.dcm ({where})")
        samples.append(Sample(str(path or root / "AllDICOMs" / name), _birads_class(row.get("birads"), where), where))
    raise_missing(missing, str(table))
    if not samples:
        raise DataError(f"{table}: no rows")
    return Manifest(split_samples(samples, fractions, seed), list(INBREAST_CLASSES), "multiclass")


def _index_inbreast(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"INbreast DICOM folder not found: {folder}")
    index: dict[str, Path] = {}
    for path in sorted(folder.glob("*.dcm")):
        prefix = path.name.split("_")[0]
        if prefix in index:
            raise DataError(f"two DICOM files for INbreast File Name {prefix}: {index[prefix]}, {path}")
        index[prefix] = path
    return index


def _birads_class(value: str | None, where: str) -> int:
    match = re.match(r"\s*([1-6])(\.0)?[a-c]?\s*$", str(value or ""), re.IGNORECASE)
    if match is None:
        raise DataError(f"{where} column 'Bi-Rads': expected 1-6 (4a/4b/4c allowed), got {value!r}")
    return int(int(match.group(1)) >= 4)


def _normalise(header: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(header).lower())


def _read_inbreast_table(path: Path) -> list[tuple[str, dict[str, str]]]:
    if path.suffix.lower() == ".csv":
        first = path.read_text(encoding="utf-8-sig").splitlines()[:1] or [""]
        delimiter = max(";,\t", key=first[0].count)
        rows = [(f"{path} line {n}", r) for n, r in _read_csv(path, (), delimiter)]
    else:
        rows = _read_excel(path)
    rows = [(w, {_normalise(k): (v or "").strip() for k, v in r.items() if k is not None}) for w, r in rows]
    rows = [(w, r) for w, r in rows if any(r.values())]
    absent = [c for c in ("filename", "birads") if rows and c not in rows[0][1]]
    if absent or not rows:
        raise DataError(f"{path}: needs columns 'File Name' and 'Bi-Rads' and at least one row")
    return rows


def _read_excel(path: Path) -> list[tuple[str, dict[str, str]]]:
    try:
        import pandas

        frame = pandas.read_excel(path, dtype=str)
    except ImportError as err:
        raise DataError(
            f"reading {path} needs pandas with xlrd (.xls) or openpyxl (.xlsx) ({err}); "
            "or save it as INbreast.csv"
        ) from err
    except Exception as err:  # a corrupt or mislabelled spreadsheet
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    frame = frame.fillna("")
    return [(f"{path} row {i + 2}", dict(zip(frame.columns, values))) for i, values in enumerate(frame.values.tolist())]
