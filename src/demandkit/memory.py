"""Freed memory kept for reuse while an estimation runs on the CPU (glibc only).

PyTorch's CPU allocator takes every tensor from ``malloc`` and gives it back with ``free``. glibc hands large
blocks back to the operating system (``munmap`` and heap trimming), so each new ``[T, J, I]`` temporary of an
objective evaluation starts with one page fault per 4 KiB, which on the BLP (1995) problem costs about as much
as the arithmetic done on it. Inside :func:`reuse_freed_memory` glibc's mmap and trim thresholds are raised so
that freed blocks stay in the heap for the next evaluation; on leaving, glibc's default thresholds are set back
and the heap is trimmed, so the memory goes back to the operating system when the solve ends.

It does nothing without glibc (macOS, Windows, musl) or when the environment variable
``DEMANDKIT_REUSE_MEMORY`` is ``0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

HELD = {M_MMAP_THRESHOLD: 256 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
"""Thresholds while inside: blocks up to 256 MiB from the heap, up to 1 GiB of free heap kept, 64 MiB padding."""

DEFAULTS = {M_MMAP_THRESHOLD: 128 << 10, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}
"""glibc's documented defaults, set back on leaving."""


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):  # not glibc
        return None


_LIBC = _glibc()
_LOCK = threading.Lock()
_depth = 0


def enabled() -> bool:
    """Whether :func:`reuse_freed_memory` changes anything in this process."""
    return _LIBC is not None and os.environ.get("DEMANDKIT_REUSE_MEMORY", "1") != "0"


@contextlib.contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Keep freed heap memory for reuse within the block (nested blocks share the outermost one's setting)."""
    global _depth
    if not enabled():
        yield
        return
    with _LOCK:
        _depth += 1
        if _depth == 1:
            for option, value in HELD.items():
                _LIBC.mallopt(option, value)
    try:
        yield
    finally:
        with _LOCK:
            _depth -= 1
            if _depth == 0:
                for option, value in DEFAULTS.items():
                    _LIBC.mallopt(option, value)
                _LIBC.malloc_trim(0)
