"""Giving freed heap memory back to the operating system (glibc's ``malloc_trim``).

glibc keeps freed blocks of its heap for reuse; when small long-lived tensors sit between
freed large ones (quantizing a model layer by layer leaves each int8 weight after its
fp32 temporaries), the resident memory stays at the high-water mark of the temporaries.
``malloc_trim(0)`` returns every free page inside the heap, not only its top. Elsewhere
(macOS, Windows, musl) there is nothing to call and :func:`trim_heap` does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys


def trim_heap() -> bool:
    """Return the heap's free pages to the system; False where glibc's ``malloc_trim`` is absent."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None
