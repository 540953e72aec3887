"""Freed memory given back to the system. glibc serves allocations below its mmap threshold
from its heap, and raises that threshold to the size of the largest block freed (up to 32 MB),
so after the first large tensor is freed, the many tensors of tens of megabytes a run makes in
turn (the refits' sums, one layer after another) stay in the heap when freed, and the process
holds the sum of them at its peak. `give_back` returns the free pages; elsewhere a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util


def _trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: musl, macOS, Windows
        return None


_TRIM = _trim()


def give_back() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim)."""
    if _TRIM is not None:
        _TRIM(0)
