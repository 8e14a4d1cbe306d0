"""``medpeft init DATA``: look at one's own data and write a commented starter config.

`inspect_data` reads an image folder (``<class>/*``, ``<split>/<class>/*``, images nested in
per-patient folders) or a CSV manifest (image, label, split and patient-like columns found
by name) with the sources a run uses, and `describe_inspection` says what it found: images
per class per split, formats, sizes, channels, bit depth, byte-identical copies and class
imbalance. `starter_config` writes the YAML a run reads, with defaults for this machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medpeft.data.csvfile import read_csv_rows
from medpeft.data.imageio import PIL_SUFFIXES, has_image_suffix
from medpeft.data.labels import positive_class
from medpeft.data.records import IMAGE_MODALITY, Record, Source
from medpeft.data.sources import csv_source, folder_source
from medpeft.data.splits import SPLITS
from medpeft.errors import ConfigError, DataError

DEFAULT_BACKBONE = "vit_base_patch16_224"
IMAGE_SIZE = 224
PROBED_IMAGES = 200  # images whose header is read for size, channels and bit depth
IMBALANCE = 5.0  # largest / smallest class count flagged as imbalanced
LABEL_NAMES = ("label", "labels", "class", "diagnosis", "target", "finding", "findings", "category", "y")
IMAGE_NAMES = ("image", "path", "file", "filename", "filepath", "image_path", "img")
SPLIT_NAMES = ("split", "subset", "set", "partition")
GROUP_PATTERN = re.compile(r"patient|subject|case|study|participant|^pid$|group", re.IGNORECASE)
BIT_DEPTH = {"1": 1, "L": 8, "P": 8, "RGB": 8, "RGBA": 8, "LA": 8, "CMYK": 8, "I;16": 16, "I;16B": 16,
             "I;16L": 16, "I": 32, "F": 32}


@dataclass
class Columns:
    """The manifest columns a CSV's data are read from (`guess_columns`)."""

    image: str
    label: str
    split: str | None = None
    group: str | None = None


@dataclass
class Inspection:
    """What `inspect_data` found in one folder or manifest."""

    path: Path
    layout: str
    source: Source
    columns: Columns | None = None
    formats: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    nested: bool = False

    @property
    def kind(self) -> str:
        return "csv" if self.columns is not None else "folder"


def inspect_data(path: str | Path) -> Inspection:
    """Read a folder or CSV manifest as a run would, and look at its image files.

    DataError naming the path if it is neither, or the layout cannot be read.
    """
    path = Path(path)
    if path.is_dir():
        source = folder_source(path)
        inspection = Inspection(path, folder_layout(source), source, nested=_nested(source))
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv", ".txt"):
        header, rows = read_csv_rows(path)
        columns = guess_columns(path, header, [row for _, row in rows])
        source = csv_source(path, image_col=columns.image, label_col=columns.label, split_col=columns.split,
                            group_col=columns.group)
        split = f", split column {columns.split!r}" if columns.split else ", no split column"
        inspection = Inspection(path, f"CSV manifest{split}", source, columns)
    else:
        raise DataError(f"{path}: expected an image folder or a CSV manifest")
    files = [Path(p) for r in source.records for p in r.values[IMAGE_MODALITY]]
    inspection.formats = Counter(_format(p) for p in files)
    _probe(inspection, files[:: max(1, len(files) // PROBED_IMAGES)][:PROBED_IMAGES])
    inspection.duplicates = identical_files(files)
    return inspection


def folder_layout(source: Source) -> str:
    """``<class>/`` or the split folders found, e.g. ``train/<class>/ + test/<class>/``."""
    splits = [s for s in SPLITS if source.split(s)]
    if not splits:
        return "folder <class>/"
    return "folder " + " + ".join(f"{s}/<class>/" for s in splits)


def _nested(source: Source) -> bool:
    """Whether images lie in sub-folders of their class folder (one per patient?)."""
    depth = 3 if any(r.split for r in source.records) else 2
    return any(len(Path(r.id).parts) > depth for r in source.records)


def guess_columns(path: Path, header: Sequence[str], rows: Sequence[dict[str, str]]) -> Columns:
    """The image, label, split and patient-like columns of a manifest, found by name and content."""
    lower = {name.lower(): name for name in header}
    image = next((lower[n] for n in IMAGE_NAMES if n in lower), None) or next(
        (name for name in header if rows and all(has_image_suffix(row[name]) for row in rows[:20] if row[name])
         and any(row[name] for row in rows[:20])), None)
    label = next((lower[n] for n in LABEL_NAMES if n in lower), None)
    if image is None or label is None:
        missing = [what for what, found in (("image", image), ("label", label)) if found is None]
        raise DataError(
            f"{path}: found no {' or '.join(missing)} column among {list(header)}; expected an image "
            f"column ({', '.join(IMAGE_NAMES[:3])}...) and a label column ({', '.join(LABEL_NAMES[:3])}...)"
        )
    split = next((lower[n] for n in SPLIT_NAMES if n in lower), None)
    group = next((name for name in header if GROUP_PATTERN.search(name) and name not in (image, label)), None)
    return Columns(image, label, split, group)


def _format(path: Path) -> str:
    name = path.name.lower()
    return "nii.gz" if name.endswith(".nii.gz") else path.suffix.lower().lstrip(".")


def _probe(inspection: Inspection, files: Sequence[Path]) -> None:
    """Count sizes and modes (channels, bit depth) from the headers of ``files`` readable by PIL."""
    from PIL import Image

    for path in files:
        if path.suffix.lower() not in PIL_SUFFIXES:
            continue
        try:
            with Image.open(path) as image:
                inspection.sizes[image.size] += 1
                inspection.modes[image.mode] += 1
        except OSError:
            inspection.modes["unreadable"] += 1


def identical_files(files: Sequence[Path]) -> list[tuple[str, str]]:
    """Pairs (first, copy) of byte-identical files; only files of equal size are hashed."""
    by_size: dict[int, list[Path]] = defaultdict(list)
    for path in dict.fromkeys(files):
        by_size[path.stat().st_size].append(path)
    pairs = []
    for same_size in (paths for paths in by_size.values() if len(paths) > 1):
        first: dict[str, Path] = {}
        for path in same_size:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in first:
                pairs.append((str(first[digest]), str(path)))
            else:
                first.setdefault(digest, path)
    return pairs


def describe_inspection(inspection: Inspection) -> list[str]:
    """Lines saying what was found (see the module docstring)."""
    source = inspection.source
    lines = [f"{inspection.path}: {inspection.layout}, {len(source.records)} images, {source.num_classes} "
             f"classes ({source.task})"]
    splits = [s for s in SPLITS if source.split(s)] or [None]
    header = "  class".ljust(24) + "".join(f"{s or 'images':>8}" for s in splits)
    lines.append(header)
    for index, label in enumerate(source.labels):
        counts = [sum(_has(r, index) for r in source.split(s)) for s in splits]
        lines.append(f"  {label}".ljust(24) + "".join(f"{n:>8}" for n in counts))
    lines.append("formats: " + ", ".join(f"{k} {n}" for k, n in inspection.formats.most_common()))
    if inspection.sizes:
        probed = sum(inspection.sizes.values())
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in inspection.sizes.most_common(3))
        modes = ", ".join(f"{_mode_text(m)} ({n})" for m, n in inspection.modes.most_common())
        lines.append(f"sizes (of {probed} probed): {sizes}; channels/bit depth: {modes}")
    if inspection.nested:
        lines.append("images lie in sub-folders of their class folders (one per patient?): a folder "
                     "source splits images, not folders; for patient-level splits write a CSV with a "
                     "patient column (data.group_col)")
    if inspection.columns is not None and inspection.columns.group:
        lines.append(f"patient-like column {inspection.columns.group!r}: data.group_col keeps each whole in one split")
    if inspection.duplicates:
        first, copy = inspection.duplicates[0]
        lines.append(f"warning: {len(inspection.duplicates)} suspected duplicate(s) (byte-identical files), "
                     f"e.g. {first} = {copy}; copies in two splits stop a run (data.leakage)")
    counts = Counter(i for r in source.records for i in _indices(r))
    largest, smallest = max(counts.values()), min(counts.values(), default=0)
    if smallest and largest / smallest >= IMBALANCE:
        lines.append(f"warning: classes are imbalanced ({largest} vs {smallest} images); consider "
                     "data.balanced: oversample and read AUROC/balanced accuracy, not accuracy")
    return lines


def _indices(record: Record) -> list[int]:
    target = record.target
    return [target] if isinstance(target, int) else [i for i, v in enumerate(target) if v]


def _has(record: Record, index: int) -> bool:
    return index in _indices(record)


def _mode_text(mode: str) -> str:
    channels = {"L": 1, "I;16": 1, "I;16B": 1, "I;16L": 1, "I": 1, "F": 1, "1": 1, "P": 1, "LA": 2, "RGB": 3}
    if mode not in BIT_DEPTH:
        return mode
    return f"{channels.get(mode, len(mode))} ch {BIT_DEPTH[mode]}-bit ({mode})"


def machine_batch_size() -> tuple[int, int, str]:
    """Batch size, loader workers and a word on this machine (GPU memory or CPU)."""
    import torch

    workers = max(0, min(4, (os.cpu_count() or 1) - 1))
    if torch.cuda.is_available():
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        return (64 if memory >= 20 else 32), workers, f"GPU with {memory:.0f} GiB"
    return 16, workers, "CPU only"


def starter_positive(source: Source) -> tuple[str | None, str]:
    """The positive class of a two-class task and how it was chosen (None, '': not two classes)."""
    try:
        chosen = positive_class(source.labels, source.task)
    except ConfigError:
        return source.labels[-1], "guessed (no class is a recognised negative such as normal): check it"
    return chosen, "the class that is not a recognised negative" if chosen else ""


def starter_config(inspection: Inspection, name: str | None = None) -> str:
    """The commented YAML of a run on the inspected data (file paths absolute)."""
    source, path = inspection.source, inspection.path.resolve()
    name = name or re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-") or "my-task"
    batch, workers, machine = machine_batch_size()
    positive, why = starter_positive(source)
    if inspection.kind == "csv":
        c = inspection.columns
        data = [f"  source: csv\n  manifest: {json.dumps(str(path))}", f"  image_col: {c.image}", f"  label_col: {c.label}",
                f"  split_col: {c.split}" if c.split else "  # no split column: splits are carved (fractions below)",
                "  # SEVERAL IMAGES PER PATIENT? Name the patient column; each patient then stays in one split.",
                f"  group_col: {c.group or 'null'}"]
    else:
        data = [f"  source: folder\n  root: {json.dumps(str(path))}   # {inspection.layout}"]
    if positive is not None:
        data.append(f"  positive_class: {json.dumps(positive)}   # {why}")
    classes = ", ".join(json.dumps(label) for label in source.labels)  # quoted: no, yes, 1 stay names
    return f"""# Starter for {path} ({inspection.layout}); written by medpeft init, edit freely.
# Run: medpeft train THIS_FILE   (any key can be overridden: medpeft train THIS_FILE train.epochs=5)
name: {name}   # the run folder is runs/<name> (set output_dir to put it elsewhere)
method: lora
model:
  # A general backbone; for X-rays try rad-dino, for pathology uni (see `medpeft backbones`).
  backbone: {DEFAULT_BACKBONE}
  img_size: {IMAGE_SIZE}
  pretrained: true
  # OFFLINE? The hub weights cannot be fetched: download the checkpoint elsewhere and set
  # weights: /path/to/model.safetensors   (or give model.weights=... on the command line)
  weights: null
lora:
  targets: [q, v]
  rank: 4
  alpha: 4
data:
{chr(10).join(data)}
  classes: [{classes}]   # fixes the class order (head outputs) and catches typos
  val_fraction: 0.1    # carved from train (stratified, seeded) when the data have no val split
  test_fraction: 0.2   # carved too when the data have no test split
  leakage: error       # the same image in two splits stops the run
  batch_size: {batch}   # {machine}
  num_workers: {workers}
train:
  epochs: 20
  optimizer: adam
  lr: 1.0e-3
  schedule: cosine
  amp: true
  monitor: auroc
  seed: 0
"""


def write_starter(data: str | Path, out: str | Path, name: str | None = None) -> tuple[Inspection, Path]:
    """Inspect ``data`` and write its starter config to ``out`` (ConfigError if it exists)."""
    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out}: already exists; give another --out or delete it")
    inspection = inspect_data(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(starter_config(inspection, name), encoding="utf-8")
    return inspection, out


def implicit_config(data: str | Path, folder: Path) -> Path:
    """``medpeft train DATA``: print what `inspect_data` found, write the starter into ``folder``."""
    inspection = inspect_data(data)
    for line in describe_inspection(inspection):
        print(line)
    print(f"no config given: training with a starter config for {inspection.layout} "
          f"(`medpeft init {data} --out my_task.yaml` writes it to edit)")
    path = folder / "starter.yaml"
    path.write_text(starter_config(inspection), encoding="utf-8")
    return path
