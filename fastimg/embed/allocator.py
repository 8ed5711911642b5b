"""Keeping freed memory in the process while the CPU encoder runs (glibc only).

Each op of a forward pass allocates its output afresh: at an 8,192-token budget a BERT FFN
activation is 50 MB. glibc serves blocks that large with ``mmap`` and unmaps them on free, so
every op's output is new pages that the kernel must fault in and zero: on the 2-core VM we
measure on, a 50 MB ``clone`` took 27 ms and a copy into memory already touched 3.2 ms, and
exact GELU 34 ms against 6.5 ms. :func:`keep_freed_memory` tells glibc to serve large blocks from
its heap and not to give freed memory back (``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD``), so the
next batch reuses pages already faulted in, the way jemalloc or tcmalloc would; on leaving it
restores glibc's defaults and trims the heap (``malloc_trim``).

It does nothing where the C library is not glibc, and nothing where the user tuned glibc
(``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TOP_PAD_`` in the environment, or an allocator preloaded by ``LD_PRELOAD``).
Figures: ``benchmarks/RESULTS.md`` (encode).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading

logger = logging.getLogger("fastimg.embed")

# mallopt parameters (malloc.h) and glibc's defaults for them
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
_INT_MAX = 2 ** 31 - 1  # mallopt takes a C int
_USER_TUNING = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                "MALLOC_TOP_PAD_", "LD_PRELOAD")

#: Switched off by the encode benchmark to time the system allocator beside it.
ENABLED = True

_lock = threading.Lock()
_depth = 0


def _glibc():
    """The process's glibc, or None (musl, macOS, Windows, a preloaded allocator)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def _tunable():
    if not ENABLED or any(os.environ.get(name) for name in _USER_TUNING):
        return None
    return _glibc()


@contextlib.contextmanager
def keep_freed_memory():
    """Inside the block, glibc keeps freed memory for reuse instead of unmapping it.

    Re-entrant and thread-safe: the settings are restored when the outermost block ends.
    """
    global _depth
    libc = _tunable()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            ok = libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, _INT_MAX)
            if not ok:
                logger.debug("mallopt refused; encoding with glibc's defaults")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
                libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
