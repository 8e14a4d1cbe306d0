"""Atomic writes: a crash mid-write never leaves a truncated file, or a folder of files
that belong together (an adapter's weights and config) half written."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medpeft.errors import ConfigError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _new_file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give a new file (0666 minus the umask)."""
    return 0o666 & ~_umask()


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


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it takes the place of ``path``.

    An error (or interruption) while filling it leaves ``path`` as it was and the
    temporary folder removed. An existing ``path`` is renamed aside, the new folder renamed
    into place, and only then the old one removed (put back if that rename fails), so
    ``path`` never holds half of the new contents. ``path`` may only hold names the new
    folder holds too: ConfigError for a folder with other files, which would be lost.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700; give the usual umask mode
        _replace_folder(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when it took path's place


def _replace_folder(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path``; an existing ``path`` is kept aside until ``new`` is in place."""
    if not path.exists():
        os.rename(new, path)
        return
    if not path.is_dir():
        raise ConfigError(f"{path} exists and is not a folder")
    other = sorted(set(os.listdir(path)) - set(os.listdir(new)))
    if other:
        raise ConfigError(
            f"{path} holds other files ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}) "
            f"that writing {', '.join(sorted(os.listdir(new)))} there would lose; write into a new folder"
        )
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(path, old)
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
