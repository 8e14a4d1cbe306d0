"""Which data a run was trained on (``data_fingerprint.json``), and the check that they are unchanged.

Recorded when training starts: the sha256 of the manifest file (CSV sources), the sha256 of
the samples as read (ids, labels, files, texts; any source) and, per image file, its size and
modification time (``os.stat`` only, so 100k files take about a second; contents are not
hashed). Resuming, rerunning a finished run, ``medpeft eval`` and ``medpeft report`` (when it
evaluates) compare the data as they are now and refuse any change, naming it. Data a run
generates from its own config (``source: synthetic``) have no fingerprint: the config is compared.
"""

from __future__ import annotations

import hashlib
import json
import os

from medpeft.atomic import atomic_write_text
from medpeft.config import DataSettings
from medpeft.data.records import Source
from medpeft.errors import DataError
from medpeft.hashing import stream_sha256
from medpeft.run_layout import RunLayout

GENERATED_SOURCES = ("synthetic",)
MAX_NAMED = 3

Fingerprint = dict


def data_fingerprint(data: DataSettings, source: Source) -> Fingerprint | None:
    """The fingerprint of ``source`` as ``data`` read it (None for generated data)."""
    if data.source in GENERATED_SOURCES:
        return None
    manifest = {"path": data.manifest, "sha256": stream_sha256(data.manifest)} if data.manifest else None
    return {"manifest": manifest, "samples": samples_sha256(source), "files": file_stats(source)}


def samples_sha256(source: Source) -> str:
    """The sha256 of every sample's id, target and values, and of the label names."""
    samples = [(r.id, r.target, sorted(r.values.items())) for r in source.records]
    text = json.dumps([source.labels, samples], sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def file_stats(source: Source) -> dict[str, list[int]]:
    """``[size, mtime_ns]`` of every image file of the samples."""
    images = [m for m, kind in source.kinds.items() if kind == "image"]
    paths = {p for r in source.records for m in images for p in r.values.get(m) or ()}
    stats = {}
    for path in sorted(paths):
        stat = os.stat(path)
        stats[path] = [stat.st_size, stat.st_mtime_ns]
    return stats


def write_fingerprint(layout: RunLayout, fingerprint: Fingerprint | None) -> None:
    """Record the run's data (nothing for generated data)."""
    if fingerprint is not None:
        atomic_write_text(layout.data_fingerprint, json.dumps(fingerprint, indent=1))


def check_fingerprint(layout: RunLayout, fingerprint: Fingerprint | None, advice: str) -> None:
    """DataError naming what changed since the run recorded its data, ending with ``advice``.

    Nothing to check for generated data or a run that recorded none (an older medpeft's).
    """
    if fingerprint is None or not layout.data_fingerprint.is_file():
        return
    path = layout.data_fingerprint
    try:
        changes = describe_changes(json.loads(path.read_text(encoding="utf-8")), fingerprint)
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        raise DataError(f"{path}: not a data fingerprint medpeft wrote ({error!r})") from error
    if changes:
        changed = "; ".join(changes)
        raise DataError(f"{layout.root}: the data changed since the run was trained: {changed}; {advice}")


def describe_changes(recorded: Fingerprint, current: Fingerprint) -> list[str]:
    """What differs between two fingerprints, each change named with a few of its files."""
    changes = []
    manifest = recorded.get("manifest")
    if manifest and manifest != current.get("manifest"):
        changes.append(f"the manifest {manifest['path']} differs (sha256)")
    before, after = recorded["files"], current["files"]
    changed = [path for path in before if path in after and before[path] != after[path]]
    for paths, what in (
        (changed, "image file(s) changed (size or modification time)"),
        ([path for path in after if path not in before], "new image file(s)"),
        ([path for path in before if path not in after], "image file(s) no longer read"),
    ):
        if paths:
            more = ", ..." if len(paths) > MAX_NAMED else ""
            changes.append(f"{len(paths)} {what}: {', '.join(paths[:MAX_NAMED])}{more}")
    if not changes and recorded["samples"] != current["samples"]:
        changes.append("the samples read (ids, labels or texts) differ")
    return changes
