"""sha256 of files, read in chunks; large files are hashed once and remembered.

:func:`file_sha256` keeps each file's digest in a small JSON cache keyed by the
resolved path, the size and the modification time (ns), so a ViT-L checkpoint is
read once, not at every load; a file that is replaced or edited misses and is hashed
again. The cache lives in ``$MEDPEFT_HASH_CACHE`` (a file), else
``$XDG_CACHE_HOME/medpeft/sha256.json``, else ``~/.cache/medpeft/sha256.json``; a cache
that cannot be read or written is ignored (the file is hashed every time).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from medpeft.atomic import atomic_write_text

HASH_CACHE_ENV = "MEDPEFT_HASH_CACHE"
CHUNK = 1 << 20
MAX_ENTRIES = 1000  # files remembered; the oldest entries are dropped first


def stream_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks (no cache)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_cache_file() -> Path:
    """Where digests are remembered (see the module docstring)."""
    if os.environ.get(HASH_CACHE_ENV):
        return Path(os.environ[HASH_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medpeft" / "sha256.json"


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file, from the cache when its path, size and mtime are unchanged."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    cache = _read_cache()
    entry = cache.get(str(resolved))
    if isinstance(entry, dict) and entry.get("stat") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = stream_sha256(resolved)
    cache.pop(str(resolved), None)
    cache[str(resolved)] = {"stat": stamp, "sha256": digest}
    _write_cache(dict(list(cache.items())[-MAX_ENTRIES:]))
    return digest


def _read_cache() -> dict:
    try:
        data = json.loads(hash_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict) -> None:
    with contextlib.suppress(OSError):  # a read-only cache folder: hash again next time
        atomic_write_text(hash_cache_file(), json.dumps(cache, indent=0))
