"""The spool's bounds: the limits an operator sets (payload bytes held, free disk kept, how long a
seen id is remembered, conflicts kept) and the room check every accept runs against them.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
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


@dataclasses.dataclass(frozen=True, slots=True)
class DiskSpace:
    """The filesystem holding the state database, as statvfs reads it; None where unreadable."""

    free: int | None
    """Bytes this (unprivileged) user may still write: what ``state.min_free`` is kept against."""
    size: int | None


def disk_space(path: Path) -> DiskSpace:
    """The filesystem holding the database ``path`` (its directory: the file may not exist yet)."""
    try:
        st = statvfs(path.parent)
    except OSError:
        return DiskSpace(None, None)
    return DiskSpace(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


TRUNCATE_RETRY: Final = 10.0
"""Seconds before another try to truncate the WAL after one a reader held back: a reader in the
middle of a statement is enough (the truncation does not wait for any), and the next commit near
the floor, an accept refused included, tries again."""
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
    """Whether an event fits: the spool under ``max_bytes`` and the disk over ``min_free``.

    Used from two threads: the writer checks and charges events inside its transactions and says
    when one commits or rolls back; the event loop asks whether an event would fit (readiness, a
    source waiting for room). One lock keeps the disk figures consistent between them.
    """

    __slots__ = (
        "_lock",
        "_reading",
        "_refused",
        "_reusable",
        "_since_reading",
        "_truncate_after",
        "_uncommitted",
        "limits",
        "path",
    )

    def __init__(self, path: Path, limits: StoreLimits) -> None:
        self.path = path
        self.limits = limits
        self._lock = threading.Lock()
        # Free bytes by statvfs and when it was read; None when it cannot be read (no floor then:
        # SQLite reports a disk that is really full).
        self._reading: tuple[float, int | None] = (-float("inf"), None)
        # Charges (disk_cost) of accepted events the reading cannot show yet: those committed
        # after it was taken, and those of the transaction being built, whose pages SQLite writes
        # only at COMMIT (a reading taken meanwhile does not include them either).
        self._since_reading = 0
        self._uncommitted = 0
        self._reusable = 0  # free pages inside the database, counted near the floor
        self._truncate_after = -float("inf")  # the writer's next WAL truncation, at the earliest
        # The smallest event refused since the spool last took one: the spool is full for as long
        # as that event would still not fit, though under both bounds.
        self._refused: int | None = None

    # -- the event loop's questions -----------------------------------------------------------

    def full(self, spool: int) -> bool:
        """True while events are refused: ``spool`` at either bound, or a refused event still
        not fitting beside it (an event larger than max_bytes never counts)."""
        with self._lock:
            if not self._fits(spool, 0):
                return True
            if self._refused is not None and self._fits(spool, self._refused):
                self._refused = None
            return self._refused is not None

    def fits(self, spool: int, size: int) -> bool:
        """True when an event of ``size`` bytes fits beside ``spool`` held bytes now."""
        with self._lock:
            return self._fits(spool, size)

    # -- the writer's, in its transactions ------------------------------------------------------

    def check(self, spool: int, size: int, *, refusal: bool = True) -> None:
        """Raise :class:`SpoolFullError` unless an event of ``size`` bytes fits beside ``spool``;
        if it does, charge it to the transaction being built. ``refusal=False``: a refusal is
        not the spool being full (a conflict kept without its payload)."""
        with self._lock:
            if spool + size > self.limits.max_bytes:
                self._refusing(size, refusal)
                raise SpoolFullError(
                    f"spool is full: {spool} bytes held plus a {size}-byte event exceed "
                    f"max_bytes={self.limits.max_bytes}"
                )
            if self._headroom(size) < 0:
                self._refusing(size, refusal)
                raise SpoolFullError(
                    f"free disk under {self.path.parent} is {self._available()} bytes: a "
                    f"{size}-byte event would leave less than min_free={self.limits.min_free} "
                    f"(with a WAL checkpoint's {CHECKPOINT_MARGIN} bytes)"
                )
            if size:
                self._refused = None  # events get in: the spool is not full
                if self.limits.min_free:
                    self._uncommitted += disk_cost(size)

    def committed(self, conn: sqlite3.Connection) -> None:
        """The transaction committed: its charges stand until a reading includes them. Near the
        floor, count the database's free pages as room: deleted rows leave pages SQLite reuses but
        never hands back to the filesystem, so a spool drained near ``min_free`` would otherwise
        stay refused for good. Only as many as the WAL holds: a commit is first appended there,
        and a larger one grows the file before any free page is reused."""
        limits = self.limits
        with self._lock:
            self._since_reading += self._uncommitted
            self._uncommitted = 0
            free = self._free()
            if not limits.min_free or free is None:
                return
            if free >= limits.min_free + max(limits.min_free, NEAR_FLOOR):
                self._reusable = 0
                return
        (pages,) = conn.execute(_REUSABLE_SQL).fetchone()
        wal = self._wal_size()
        with self._lock:
            self._reusable = min(int(pages), wal)
            stuck = wal > 0 and self._headroom(PAGE) < 0
        if stuck and self._give_back_wal(conn):
            with self._lock:
                self._reusable = 0
                self._reading = (-float("inf"), None)  # read the disk again at the next check

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _give_back_wal(self, conn: sqlite3.Connection) -> bool:
        """Checkpoint the WAL and truncate it to nothing; True when that ran.

        The WAL file keeps the size of the largest transaction since the database opened (a
        drain moving a sink's backlog to the history can take megabytes) and SQLite never gives
        it back while open: near the floor those bytes, with the room a checkpoint may still take,
        would keep even a drained spool refused until a restart. Tried only once no event fits, at
        most once per disk reading, and without waiting for readers."""
        now = time.monotonic()
        if now < self._truncate_after:
            return False
        # Not waiting for readers: one holding a snapshot (a backup, a shell's open transaction)
        # would hold the writer, and every commit of the drain, for the whole busy timeout.
        (timeout,) = conn.execute("PRAGMA busy_timeout").fetchone()
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            (busy, _, _) = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            busy = True  # the disk refuses: as a reader in the way
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout):d}")
        # After a failure, look again less often: each try copies what it can first.
        self._truncate_after = now + (TRUNCATE_RETRY if busy else DISK_CACHE_SECONDS)
        return not busy

    def rolled_back(self) -> None:
        """The transaction wrote nothing: its charges go."""
        with self._lock:
            self._uncommitted = 0

    # -- under the lock -------------------------------------------------------------------------

    def _fits(self, spool: int, size: int) -> bool:
        limits = self.limits
        return (
            spool + size <= limits.max_bytes
            and spool < limits.max_bytes
            and self._headroom(size) >= 0
        )

    def _headroom(self, size: int) -> int:
        """Disk left above ``min_free`` once an event of ``size`` bytes is written (negative: it
        does not fit); for 0, above ``min_free`` as it is. ``min_free: 0`` keeps no floor, nor
        does a disk that cannot be read: SQLite's own error then refuses a write that fails."""
        available = self._available()
        if not self.limits.min_free or available is None:
            return 1 << 62
        need = disk_cost(size) + CHECKPOINT_MARGIN if size else 0
        return available - need - self.limits.min_free

    def _available(self) -> int | None:
        free = self._free()
        if free is None:
            return None
        return free - self._since_reading - self._uncommitted + self._reusable

    def _free(self) -> int | None:
        checked, free = self._reading
        now = time.monotonic()
        if now - checked > DISK_CACHE_SECONDS:
            free = disk_space(self.path).free
            self._reading = (now, free)
            self._since_reading = 0  # committed before this reading: in it
        return free

    def _refusing(self, size: int, refusal: bool) -> None:
        smallest = self._refused is None or size < self._refused
        if refusal and size <= self.limits.max_bytes and smallest:
            self._refused = size
