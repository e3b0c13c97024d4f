"""glibc malloc tuning for a long-running process that reads large request bodies.

By default glibc raises its mmap threshold after the first large block is freed, so later large
blocks (a burst of 1 MiB webhook bodies) come from the heap and stay in the process after they are
freed; worker threads (large bodies are verified off the event loop) each get arenas of their own.
A fixed threshold sends every block above it to mmap, returned to the system when freed, and two
arenas bound what threads hold. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8
MMAP_THRESHOLD: Final = 128 << 10
ARENA_MAX: Final = 2


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold and arena count; True when glibc took the settings."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD),
            (M_ARENA_MAX, ARENA_MAX),
        )
    )
