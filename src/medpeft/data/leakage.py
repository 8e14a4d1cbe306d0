"""Images shared between splits: the same file, or byte-identical files, in two splits.

The same pixels in train and test make test scores a memory test. `shared_images`
finds every image that rows of different splits share: the same file (by real
path: ``imgs/x.png``, ``imgs/../imgs/x.png`` and the absolute path are one file)
or a copy with the same bytes. Contents are compared cheaply: only files of equal
size read by rows of different splits are hashed, first their first 64 KiB, then
whole files whose heads agree. `check_leakage` stops a run (``data.leakage:
error``) or logs a warning (``warn``) naming the rows.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Hashable, Mapping, Sequence

from medpeft.data.records import Record
from medpeft.errors import DataError

Reading = tuple[Record, str]  # a record and one of its image paths as written
log = logging.getLogger(__name__)
MAX_LISTED = 5
HEAD_BYTES = 1 << 16
CHUNK_BYTES = 1 << 20


def check_leakage(records: Sequence[Record], kinds: Mapping[str, str], policy: str = "error") -> None:
    """DataError (``policy="error"``) or a warning (``"warn"``) listing images shared between splits."""
    leaks = shared_images(records, kinds)
    if not leaks:
        return
    shown = "\n  ".join(leaks[:MAX_LISTED])
    more = f"\n  ... and {len(leaks) - MAX_LISTED} more" if len(leaks) > MAX_LISTED else ""
    message = f"{len(leaks)} image(s) shared between splits (data.leakage: {policy}):\n  {shown}{more}"
    if policy == "error":
        raise DataError(
            f"{message}\nthe same pixels in two splits inflate the scores: keep one row, put the rows in "
            "one split (data.group_col keeps a patient's images together), or set data.leakage: warn"
        )
    log.warning("warning: %s", message)


def shared_images(records: Sequence[Record], kinds: Mapping[str, str]) -> list[str]:
    """One line per image read by rows of different splits (same file or same bytes), naming the rows."""
    readers: dict[str, list[Reading]] = {}  # real path -> (record, path as written), in record order
    for record in records:
        for m, kind in kinds.items():
            if kind == "image" and record.split is not None:
                for path in record.values.get(m) or ():
                    readers.setdefault(os.path.realpath(path), []).append((record, path))
    lines = []
    for files in _same_content(readers):
        firsts: dict[str, tuple[Record, str, str]] = {}  # split -> its first (record, real, written)
        for real in files:
            for record, written in readers[real]:
                firsts.setdefault(record.split, (record, real, written))
        if len(firsts) > 1:
            rows = " and ".join(f"{r.where or r.id} ({split})" for split, (r, _, _) in firsts.items())
            lines.append(f"{rows}: {_what(list(firsts.values()))}")
    return lines


def _what(firsts: Sequence[tuple[Record, str, str]]) -> str:
    """``the same file X`` or ``byte-identical files X and Y``, paths as the rows write them."""
    written_as: dict[str, str] = {}  # real path -> as its first row writes it
    for _, real, written in firsts:
        written_as.setdefault(real, written)
    paths = list(written_as.values())
    if len(paths) == 1:
        return f"the same file {paths[0]}"
    more = f" (and {len(paths) - 2} more)" if len(paths) > 2 else ""
    return f"byte-identical files {paths[0]} and {paths[1]}{more}"


def _same_content(readers: Mapping[str, Sequence[Reading]]) -> list[list[str]]:
    """The real paths in groups of identical bytes, in order of first reading.

    Only files that could leak are read: those of one size, read by rows of at least
    two splits; their heads are hashed, and whole files only where heads agree.
    """
    def spans(paths: Sequence[str]) -> bool:
        return len({r.split for p in paths for r, _ in readers[p]}) > 1

    groups = [list(readers)]
    for key in (_size, _head_hash, _file_hash):
        groups = [
            sub for group in groups
            for sub in (_partition(group, key) if len(group) > 1 and spans(group) else [group])
        ]
    position = {path: index for index, path in enumerate(readers)}
    return sorted(groups, key=lambda group: position[group[0]])  # a group keeps reading order


def _partition(paths: Sequence[str], key: Callable[[str], Hashable]) -> list[list[str]]:
    """``paths`` grouped by ``key`` (a file that cannot be read stays on its own)."""
    groups: dict[Hashable, list[str]] = {}
    for path in paths:
        try:
            value: Hashable = key(path)
        except OSError:  # a missing or unreadable file is reported where images are checked
            value = ("unreadable", path)
        groups.setdefault(value, []).append(path)
    return list(groups.values())


def _size(path: str) -> int:
    return os.stat(path).st_size


def _head_hash(path: str) -> bytes:
    with open(path, "rb") as handle:
        return hashlib.blake2b(handle.read(HEAD_BYTES), digest_size=16).digest()


def _file_hash(path: str) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.digest()
