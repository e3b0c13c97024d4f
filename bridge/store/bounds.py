"""The spool's bounds: the limits an operator sets (payload bytes held, free disk kept, how long a
seen id is remembered, conflicts kept) and the room check every accept runs against them.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from pathlib import Path
from typing import Final

from bridge.config import StateConfig
from bridge.errors import SpoolFullError

DISK_CACHE_SECONDS: Final = 1.0
"""How long a free-disk reading is trusted; also how often a waiter for room looks again."""
PAGE: Final = 4096
NEAR_FLOOR: Final = 64 << 20
"""Free disk within this (or ``min_free``, if larger) above ``min_free`` is near the floor: the
database's own free pages are then counted as room too (:meth:`Room.look_inside`)."""
_REUSABLE_SQL: Final = (
    "SELECT freelist_count * page_size FROM pragma_freelist_count(), pragma_page_size()"
)


statvfs = os.statvfs
"""Read through the module, so that a test can give the store a disk of its own size."""


CHECKPOINT_MARGIN: Final = 1000 * PAGE
"""Room an event must leave above ``min_free`` besides its own: what a WAL checkpoint may still
add to the database file (SQLite checkpoints every 1000 pages), written after the check."""


def disk_cost(size: int) -> int:
    """About what accepting an event of ``size`` payload bytes takes of the disk: the payload in
    the spool and again in the history, and a page of rows and index entries. An estimate, taken
    off the cached free-disk reading so that a burst between two readings cannot run through
    ``min_free``; the next reading says what was really used."""
    return 2 * size + PAGE


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

    __slots__ = ("_disk", "_refused", "_reusable", "limits", "path")

    def __init__(self, path: Path, limits: StoreLimits) -> None:
        self.path = path
        self.limits = limits
        self._disk: tuple[float, int] = (-float("inf"), 0)  # (when read, free bytes)
        # The smallest event refused since the spool last had room for it: the spool is full for
        # as long as that event would still not fit, though under both bounds.
        self._refused: int | None = None
        self._reusable = 0  # bytes of free pages inside the database, counted near the floor

    def full(self, spool: int) -> bool:
        """True while events are refused: ``spool`` at either bound, or a refused event still
        not fitting beside it (an event larger than max_bytes never counts)."""
        if not self.fits(spool, 0):
            return True
        refused = self._refused
        if refused is not None and self.fits(spool, refused):
            self._refused = refused = None
        return refused is not None

    def _refusing(self, size: int) -> None:
        if size <= self.limits.max_bytes and (self._refused is None or size < self._refused):
            self._refused = size

    def fits(self, spool: int, size: int) -> bool:
        """True when an event of ``size`` bytes fits beside ``spool`` held bytes now."""
        limits = self.limits
        return (
            spool + size <= limits.max_bytes
            and spool < limits.max_bytes
            and self.headroom(size) >= 0
        )

    def headroom(self, size: int) -> int:
        """Disk left above ``min_free`` once an event of ``size`` bytes is written (negative: it
        does not fit); for 0, above ``min_free`` as it is. ``min_free: 0`` keeps no floor: the
        disk may fill, and SQLite's own error then refuses the write."""
        need = disk_cost(size) + CHECKPOINT_MARGIN if size and self.limits.min_free else 0
        return self.available() - need - self.limits.min_free

    def available(self) -> int:
        """Free disk, with the database's free pages when near the floor (:meth:`look_inside`)."""
        return self.free_disk() + self._reusable

    def look_inside(self, conn: sqlite3.Connection) -> None:
        """After a commit, on the writer's thread: near the floor, count the database's free
        pages as room. Deleted rows leave pages SQLite reuses but never hands back to the
        filesystem, so a spool drained near ``min_free`` would otherwise stay refused for good."""
        limits = self.limits
        if self.free_disk() >= limits.min_free + max(limits.min_free, NEAR_FLOOR):
            self._reusable = 0
            return
        (reusable,) = conn.execute(_REUSABLE_SQL).fetchone()
        self._reusable = int(reusable)

    def check(self, spool: int, size: int) -> None:
        """Raise :class:`SpoolFullError` unless an event of ``size`` bytes fits beside ``spool``."""
        if spool + size > self.limits.max_bytes:
            self._refusing(size)
            raise SpoolFullError(
                f"spool is full: {spool} bytes held plus a {size}-byte event exceed "
                f"max_bytes={self.limits.max_bytes}"
            )
        if self.headroom(size) < 0:
            self._refusing(size)
            raise SpoolFullError(
                f"free disk under {self.path.parent} is {self.available()} bytes: a {size}-byte "
                f"event would leave less than min_free={self.limits.min_free} (with a WAL "
                f"checkpoint's {CHECKPOINT_MARGIN} bytes)"
            )
        checked, on_disk = self._disk
        self._disk = (checked, on_disk - disk_cost(size))  # until a reading says what it took

    def free_disk(self) -> int:
        checked, free = self._disk
        now = time.monotonic()
        if now - checked > DISK_CACHE_SECONDS:
            try:
                st = statvfs(self.path.parent)
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = self.limits.min_free  # unknown: let SQLite report a real failure
            self._disk = (now, free)
        return free
