"""The spool's bounds: the limits an operator sets (payload bytes held, free disk kept, how long a
seen id is remembered, conflicts kept) and the room check every accept runs against them.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Final

from bridge.config import StateConfig
from bridge.errors import SpoolFullError

DISK_CACHE_SECONDS: Final = 1.0
"""How long a free-disk reading is trusted; also how often a waiter for room looks again."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    max_bytes: int = 1 << 30  # spool bound: payload bytes of events still held
    min_free: int = 256 << 20  # free-disk floor of the filesystem holding the database
    dedup_window: float = 7 * 86400  # seconds a seen event_id is remembered
    # Conflicts kept for inspection. Past this many, a conflict is still answered, counted and
    # logged, but not stored: a stream of them must not grow the database without limit.
    max_quarantined: int = 1000
    # Delivered events kept (payloads included) for `events` and the console; 0 keeps none.
    # Bounded by count, outside max_bytes.
    history: int = 1000

    @classmethod
    def from_config(cls, state: StateConfig) -> StoreLimits:
        """The limits the ``state`` section of the config sets."""
        return cls(
            max_bytes=state.max_bytes,
            min_free=state.min_free,
            dedup_window=state.dedup_window,
            history=state.history,
        )


class Room:
    """Whether an event fits: the spool under ``max_bytes`` and the disk over ``min_free``."""

    __slots__ = ("_disk", "_refused", "limits", "path")

    def __init__(self, path: Path, limits: StoreLimits) -> None:
        self.path = path
        self.limits = limits
        self._disk: tuple[float, int] = (-float("inf"), 0)  # (when read, free bytes)
        # The smallest event refused for max_bytes since the spool last had room for it: the
        # spool is full for as long as that event would still not fit, though under the bound.
        self._refused: int | None = None

    def full(self, spool: int) -> bool:
        """True while events are refused: ``spool`` at either bound, or an event refused for
        max_bytes still not fitting beside it (an event larger than max_bytes never counts)."""
        if not self.fits(spool, 0):
            return True
        refused = self._refused
        if refused is not None and spool + refused <= self.limits.max_bytes:
            self._refused = refused = None
        return refused is not None

    def fits(self, spool: int, size: int) -> bool:
        """True when an event of ``size`` bytes fits beside ``spool`` held bytes now."""
        limits = self.limits
        return (
            spool + size <= limits.max_bytes
            and spool < limits.max_bytes
            and self.free_disk() >= limits.min_free
        )

    def check(self, spool: int, size: int) -> None:
        """Raise :class:`SpoolFullError` unless an event of ``size`` bytes fits beside ``spool``."""
        if spool + size > self.limits.max_bytes:
            if size <= self.limits.max_bytes and (self._refused is None or size < self._refused):
                self._refused = size
            raise SpoolFullError(
                f"spool is full: {spool} bytes held plus a {size}-byte event exceed "
                f"max_bytes={self.limits.max_bytes}"
            )
        if (free := self.free_disk()) < self.limits.min_free:
            raise SpoolFullError(
                f"free disk under {self.path.parent} is {free} bytes, below "
                f"min_free={self.limits.min_free}"
            )

    def free_disk(self) -> int:
        checked, free = self._disk
        now = time.monotonic()
        if now - checked > DISK_CACHE_SECONDS:
            try:
                st = os.statvfs(self.path.parent)
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = self.limits.min_free  # unknown: let SQLite report a real failure
            self._disk = (now, free)
        return free
