"""glibc malloc, kept in check for a long-running process that reads large request bodies.

By default glibc raises its mmap threshold after the first large block is freed, so later large
blocks (a burst of 1 MiB webhook bodies) come from the heap and stay in the process after they are
freed; worker threads (large bodies are verified off the event loop) each get arenas of their own.
A fixed threshold sends every block above it to mmap, returned to the system when freed, and two
arenas bound what threads hold (:func:`tune_malloc`, at start).

Smaller blocks still come from the heap, and glibc keeps what is freed there unless it lies at
the very top: after a flood of bodies (most of them refused) the process would sit tens of MiB
above its working size for as long as it runs, though nothing holds that memory any more.
``malloc_trim(0)`` returns the free pages of every arena; :class:`HeapTrimmer` calls it once
enough bytes came in. Where the C library is not glibc, all of this does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
from collections.abc import Awaitable, Callable
from typing import Final

M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3
M_ARENA_MAX: Final = -8
MMAP_THRESHOLD: Final = 128 << 10
ARENA_MAX: Final = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None
    name = ctypes.util.find_library("c")
    if not version or not version.startswith("glibc") or name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold and arena count; True when glibc took the settings."""
    mallopt = getattr(_glibc(), "mallopt", None)
    if mallopt is None:
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


Trim = Callable[[], object]
"""Gives free heap memory back; what it returns is ignored."""

TRIM_AFTER_BYTES: Final = 16 * 1024 * 1024
"""Request bytes received between trims: a trim is owed after this many, not after each body."""
TRIM_DELAY: Final = 1.0
"""Seconds from the byte that makes a trim owed to the trim: a burst is trimmed once, after it."""


@functools.cache
def glibc_trim() -> Trim | None:
    """``malloc_trim(0)`` when the C library is glibc; None elsewhere."""
    malloc_trim = getattr(_glibc(), "malloc_trim", None)
    if malloc_trim is None:
        return None
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return lambda: malloc_trim(0)


Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep``, or a stand-in a test releases by hand."""


class HeapTrimmer:
    """Counts bytes received and, once ``after_bytes`` have come in, trims the heap ``delay``
    seconds later on a worker thread (it takes malloc's lock, not the event loop).

    Args:
        trim: what gives memory back (:func:`glibc_trim`); None: never trim.
        sleep: waits out the delay.
    """

    def __init__(
        self,
        trim: Trim | None,
        *,
        after_bytes: int = TRIM_AFTER_BYTES,
        delay: float = TRIM_DELAY,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._trim = trim
        self._after = after_bytes
        self._delay = delay
        self._sleep = sleep
        self._received = 0
        self._task: asyncio.Task[None] | None = None
        self.trims = 0
        """Trims made so far."""

    @property
    def owed(self) -> bool:
        """Whether a trim is waiting out its delay or running."""
        return self._task is not None

    def received(self, size: int) -> None:
        """``size`` more bytes came in."""
        if self._trim is None:
            return
        self._received += size
        if self._received >= self._after and self._task is None:
            self._task = asyncio.create_task(self._trim_later(self._trim), name="heap-trim")

    def close(self) -> None:
        """Trim no more; a trim already on its thread finishes there."""
        self._trim = None
        if self._task is not None:
            self._task.cancel()

    async def _trim_later(self, trim: Trim) -> None:
        try:
            await self._sleep(self._delay)
            self._received = 0  # what comes in from here on is the next burst's
            self.trims += 1
            await asyncio.to_thread(trim)
        finally:
            self._task = None
