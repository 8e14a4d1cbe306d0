"""IU X-ray (Indiana University chest X-rays / OpenI), Kaggle layout, as used by MoRA.

Layout under ``root``:
    ``indiana_reports.csv``: ``uid, MeSH, Problems, ..., findings, impression``;
    ``indiana_projections.csv``: ``uid, filename, projection`` (``Frontal``/``Lateral``);
    ``images/images_normalized/<filename>``.

One record per report: modality ``image`` = the first frontal projection
listed for the uid, modality ``text`` = findings + " " + impression (empty if
both are blank: a genuinely missing text). Labels: 20 problems, multilabel;
``Problems`` holds ``;``-separated names and ``normal`` means all zeros.
Default label list: the 20 most frequent problems over all reports (ties
alphabetical, ``normal`` excluded); pass ``labels`` to fix it. Problems
outside the list are ignored. Reports without a frontal image are dropped
(counted in a log warning) unless ``drop_without_image=False``, which keeps
them with a missing image. Split: seeded and stratified, exact counts proportional to MoRA's 3022/399/373.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from medpeft.data.csvfile import Rows, check_columns, read_csv_rows
from medpeft.data.records import Record, Source
from medpeft.data.splits import seeded_split
from medpeft.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLIT_SIZES = (3022, 399, 373)
NUM_LABELS = 20
NORMAL = "normal"
KINDS = {"image": "image", "text": "text"}
REPORTS = "indiana_reports.csv"
PROJECTIONS = "indiana_projections.csv"
IMAGE_DIR = Path("images") / "images_normalized"


def parse_problems(cell: str) -> list[str]:
    """Problem names of one report (``normal`` and blanks removed)."""
    names = (p.strip() for p in (cell or "").split(";"))
    return [p for p in names if p and p.lower() != NORMAL]


def top_problems(reports: Sequence[dict[str, str]], k: int = NUM_LABELS) -> list[str]:
    """The ``k`` most frequent problems, ties broken alphabetically."""
    counts = Counter(p for r in reports for p in set(parse_problems(r.get("Problems", ""))))
    return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def compose_text(report: dict[str, str]) -> str:
    """Findings then impression, blanks skipped."""
    parts = (report.get(c, "").strip() for c in ("findings", "impression"))
    return " ".join(p for p in parts if p)


def frontal_images(path: Path) -> dict[str, str]:
    """uid -> file name of its first frontal projection."""
    header, rows = read_csv_rows(path)
    check_columns(path, header, ("uid", "filename", "projection"))
    frontal: dict[str, str] = {}
    for _, row in rows:
        if row["projection"].strip().lower() == "frontal":
            frontal.setdefault(row["uid"].strip(), row["filename"].strip())
    return frontal


def _read_reports(path: Path) -> Rows:
    header, rows = read_csv_rows(path)
    check_columns(path, header, ("uid", "Problems", "findings", "impression"))
    return rows


def _image(frontal: dict[str, str], uid: str, image_dir: Path, where: str) -> tuple[str, ...]:
    if uid not in frontal:
        return ()
    path = image_dir / frontal[uid]
    if not path.is_file():
        raise DataError(f"{where}: frontal image of uid {uid} not found: {path}")
    return (str(path),)


def load_iu_xray(
    root: str | Path,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    drop_without_image: bool = True,
) -> Source:
    """Records of IU X-ray, with splits assigned.

    Args:
        root: dataset folder (Kaggle layout, see the module docstring).
        labels: problem names to predict (default: the 20 most frequent).
        seed: split seed.
        drop_without_image: drop reports that have no frontal image.
    """
    root = Path(root)
    reports_path = root / REPORTS
    reports = _read_reports(reports_path)
    frontal = frontal_images(root / PROJECTIONS)
    names = list(labels) if labels is not None else top_problems([r for _, r in reports])
    if not names:
        raise ConfigError(f"{reports_path}: no problem labels found or given")
    records, dropped = [], []
    for line, report in reports:
        uid, where = report["uid"].strip(), f"{reports_path} line {line}"
        image = _image(frontal, uid, root / IMAGE_DIR, where)
        if not image and drop_without_image:
            dropped.append(uid)
            continue
        problems = set(parse_problems(report["Problems"]))
        target = tuple(float(n in problems) for n in names)
        values = {"image": image, "text": compose_text(report)}
        records.append(Record(uid, values, target, where=where))
    if dropped:
        log.warning(
            "IU X-ray: dropped %d report(s) without a frontal image: %s", len(dropped), dropped[:10]
        )
    for record, split in zip(records, seeded_split([r.target for r in records], SPLIT_SIZES, seed)):
        record.split = split
    return Source(records, ("image", "text"), dict(KINDS), names, "multilabel")
