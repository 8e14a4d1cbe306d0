"""Read an image folder, ``root/<class>/...`` or ``root/<split>/<class>/...``, into a `Source`.

One modality, ``"image"``; multiclass, one class per folder. Images are found
recursively by extension, hidden files skipped; sample ids are paths relative
to ``root``. Without split folders the records are unsplit (see
`medpeft.data.splits.assign_splits`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from medpeft.data.csvfile import MAX_LISTED
from medpeft.data.imageio import has_image_suffix
from medpeft.data.labels import match_class, ordered_labels
from medpeft.data.records import IMAGE_MODALITY, Record, Source, drop_duplicates, image_source
from medpeft.data.splits import SPLIT_ALIASES, parse_split
from medpeft.errors import DataError


def folder_source(root: str | Path, classes: Sequence[str] | None = None) -> Source:
    """Read an image folder (see the module docstring).

    Args:
        root: the dataset folder.
        classes: class names in head order (default: sorted folder names).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    folders = _subfolders(root)
    split_dirs = [f for f in folders if f.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) != len(folders):
        names = [f.name for f in folders]
        raise DataError(f"{root}: mixes split folders and class folders: {names}")
    groups = [(parse_split(f.name, str(f)), f) for f in split_dirs] or [(None, root)]
    found = [
        (split, sub, _image_files(sub)) for split, folder in groups for sub in _subfolders(folder, False)
    ]
    if not found:
        raise DataError(f"{root}: no class folders with images")
    seen = Counter()
    for _, sub, files in found:
        seen[sub.name] += len(files)
    labels = ordered_labels(seen.elements(), classes, str(root))
    unknown = sorted(name for name in seen if match_class(name, labels) is None)
    if unknown:
        raise DataError(f"{root}: class folder(s) {unknown} not in classes {labels}")
    records = [
        Record(p.relative_to(root).as_posix(), {IMAGE_MODALITY: (str(p),)},
               labels.index(match_class(sub.name, labels)), split, str(sub))
        for split, sub, files in found
        for p in files
    ]
    return image_source(drop_duplicates(records, labels, drop=False), labels, "multiclass")


def _subfolders(folder: Path, images_allowed: bool = True) -> list[Path]:
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and has_image_suffix(p))
    if stray and not images_allowed:
        raise DataError(f"{folder}: image files outside a class folder: {stray[:MAX_LISTED]}")
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, by extension; hidden files skipped), sorted."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and has_image_suffix(p) and not p.name.startswith(".")
    )


def _image_files(folder: Path) -> list[Path]:
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: class folder holds no image files")
    return files
