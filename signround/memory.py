"""Giving freed heap memory back to the operating system, so peak RSS follows what is live.

A streamed run frees each block's tensors before reading the next, but glibc's malloc keeps freed
chunks below its mmap threshold (which grows up to 32 MiB as large blocks are freed) in its arenas,
one arena per thread that ever allocated: RSS then creeps up block after block, by an amount that
depends on thread timing. ``release_free_memory`` asks glibc to return every free page now
(``malloc_trim(0)``: all arenas, holes in the middle included); elsewhere (musl, macOS, Windows)
it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["release_free_memory"]


@functools.cache
def _libc() -> "ctypes.CDLL | None":
    """The C library when it is glibc (the one with ``malloc_trim``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return the heap's free pages to the OS (glibc); True when that was possible."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
