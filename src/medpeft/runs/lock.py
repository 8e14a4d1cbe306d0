"""One training process per run folder: ``run.lock`` holds the pid and host of its owner.

`run_lock` creates the file atomically (``O_EXCL``) and removes it when the run ends,
finished, failed or interrupted. A lock of a live process on this machine is refused
naming it; a lock whose process is gone (killed, machine restarted) is taken over with
a warning. A lock written on another host is refused: its process cannot be checked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from medpeft.errors import ConfigError

log = logging.getLogger(__name__)
LOCK = "run.lock"


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder/run.lock`` while the body runs (see the module docstring)."""
    path = Path(folder) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    _acquire(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _acquire(path: Path) -> None:
    """Create the lock file, taking over a stale one; ConfigError if a live run holds it."""
    owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(2):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _take_over_if_stale(path)
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(owner)
        return
    raise ConfigError(f"{path}: another run took this folder's lock at the same time; give another output_dir")


def _take_over_if_stale(path: Path) -> None:
    """Remove ``path`` if its process is dead (saying so); ConfigError naming a live owner."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        pid, host = None, socket.gethostname()  # unreadable: a crash mid-write; treat as stale
    if host != socket.gethostname():
        raise ConfigError(
            f"{path.parent}: locked by process {pid} on host {host!r}; wait for that run, give another "
            f"output_dir, or delete {path} if no run is using the folder"
        )
    if pid is not None and _alive(pid):
        raise ConfigError(
            f"{path.parent}: another run (process {pid}) is writing this folder; wait for it to end "
            "or give another output_dir"
        )
    log.warning("warning: %s: taking over the lock of process %s, which is no longer running", path.parent, pid)
    path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True
