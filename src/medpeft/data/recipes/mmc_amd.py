"""MMC-AMD (colour fundus + OCT, 4 AMD classes), as used by the EI paper (arXiv 2603.17514).

Layout under ``root`` (the dataset's ``ImageData`` folder): colour fundus photographs
(CFP) ``f-<c>-<eye>.jpg`` and OCT B-scans ``o-<c>-<eye>[_<n>].jpg``, found anywhere
below ``root`` (the EI lists use ``cfp-448x448/`` and ``oct/``). ``<c>`` is the class:
``h`` no_amd, ``d`` dry_amd, ``p`` pcv, ``w`` wet_amd. An eye's id is the name
without the ``f-``/``o-`` prefix, extension and ``_<n>`` suffix (the MMC-AMD code's
``get_eyeid``), which pairs a CFP with the OCT scans of the same eye.

One record per eye with both a CFP and at least one OCT scan (unpaired images are
counted in a log warning): modality ``cfp`` = the photograph, modality ``oct`` = every
B-scan of the eye, sorted, read ``one`` at a time (a random scan in training, the
first otherwise, as the EI code does).

Split: the EI lists ``<lists>/mmc-amd_{train,val,test}/anno.txt`` with
``mapping_mmc-amd.json`` when found (``lists``, default ``root/datasplit``: 610/79/79
eyes), else seeded and stratified in the same proportions.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

from medpeft.data.recipes.annotations import find_lists, load_annotations
from medpeft.data.records import Record, Source
from medpeft.data.splits import seeded_split
from medpeft.errors import DataError

log = logging.getLogger(__name__)

CLASSES = ("no_amd", "dry_amd", "pcv", "wet_amd")
CLASS_LETTERS = {"h": "no_amd", "d": "dry_amd", "p": "pcv", "w": "wet_amd"}
MODALITIES = ("cfp", "oct")
COMBINE = {"oct": "one"}
SPLIT_SIZES = (610, 79, 79)
LIST_NAMES = {"train": "train", "val": "val", "test": "test"}
MAPPING = "mapping_mmc-amd.json"
_NAME = re.compile(r"^(?P<kind>[fo])-(?P<eye>(?P<cls>[hdpw])-[^_]+)(_\d+)?\.(jpe?g|png)$", re.IGNORECASE)


def load_mmc_amd(root: str | Path, seed: int = 0, lists: str | Path | None = None) -> Source:
    """Records of MMC-AMD, one per eye, with splits assigned (see the module docstring).

    Args:
        root: The image folder (holding the CFP and OCT images).
        seed: Split seed (used without the EI lists).
        lists: The EI ``datasplit`` folder (default ``root/datasplit``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"MMC-AMD folder not found: {root}")
    folder = Path(lists) if lists is not None else root / "datasplit"
    found = find_lists(folder, "mmc-amd", LIST_NAMES)
    if found is not None:
        return load_annotations(root, found, folder / MAPPING, MODALITIES, "multiclass", COMBINE)
    if lists is not None:
        raise DataError(f"{folder}: no mmc-amd_{{train,val,test}}/anno.txt lists")
    records = _paired_eyes(root)
    for record, split in zip(records, seeded_split([r.target for r in records], SPLIT_SIZES, seed)):
        record.split = split
    return Source(records, MODALITIES, dict.fromkeys(MODALITIES, "image"), list(CLASSES), "multiclass", dict(COMBINE))


def _paired_eyes(root: Path) -> list[Record]:
    """One record per eye that has a CFP and at least one OCT scan."""
    cfp: dict[str, Path] = {}
    oct_scans: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        match = _NAME.match(path.name)
        if match is None:
            continue
        eye = match["eye"]
        if match["kind"].lower() == "o":
            oct_scans[eye].append(path)
        elif eye in cfp:
            raise DataError(f"two colour fundus images of eye {eye}: {cfp[eye]}, {path}")
        else:
            cfp[eye] = path
    paired = sorted(set(cfp) & set(oct_scans))
    if not paired:
        raise DataError(f"{root}: no CFP f-<c>-<eye>.jpg with OCT o-<c>-<eye>[_<n>].jpg of the same eye")
    unpaired = sorted(set(cfp) ^ set(oct_scans))
    if unpaired:
        log.warning("MMC-AMD: %d eye(s) without both a CFP and an OCT skipped: %s", len(unpaired), unpaired[:10])
    return [
        Record(
            eye,
            {"cfp": (str(cfp[eye]),), "oct": tuple(str(p) for p in sorted(oct_scans[eye]))},
            CLASSES.index(CLASS_LETTERS[eye[0].lower()]),
            where=str(cfp[eye]),
        )
        for eye in paired
    ]
