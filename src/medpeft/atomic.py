"""Atomic file writes: a crash mid-write never leaves a truncated file behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _new_file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give a new file (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file lives in the same folder, so the final ``os.replace``
    is atomic on POSIX and Windows. An OS error (disk full, no permission) is
    raised again naming ``path`` and saying that its previous version is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp creates 0600; give the usual umask mode
        write(Path(tmp))
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        reason = error.strerror or str(error)
        raise OSError(error.errno, f"{reason}; any earlier version of the file is kept", str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
