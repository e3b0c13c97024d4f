"""The state database file: its schema and migrations, the one-process lock, and opening it safely.

Everything here runs before the store serves a request, on the store's writer thread: creating
the directory, taking ``<db>.lock``, setting the pragmas, migrating ``PRAGMA user_version``
forward, and moving a database SQLite reports as corrupt aside (never one that merely cannot be
opened).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import structlog

from bridge.errors import StoreError, StoreLockedError, StoreVersionError

log = structlog.get_logger(__name__)

BUSY_TIMEOUT: Final = 5.0
"""Seconds a write waits for another connection's write lock (the daemon and the ``dlq`` command
share the file) before it fails with SQLITE_BUSY."""

Migration = Sequence[str]

# Migration N (1-based) takes a database from user_version N-1 to N. Append, never edit: a
# released migration has already run on someone's disk.
MIGRATIONS: Final[Sequence[Migration]] = (
    (
        # Small key/value facts: the WebSocket cursor, the time of the last accepted event.
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
        # Dedup memory. The primary key is the dedup index; seen_at drives the window prune.
        "CREATE TABLE seen (event_id TEXT PRIMARY KEY, seen_at REAL NOT NULL) WITHOUT ROWID",
        "CREATE INDEX seen_by_age ON seen (seen_at)",
        # AUTOINCREMENT: seq and delivery ids are never reused, so a stale id held by a sink
        # worker can never name another event's row. payload last: the row's other columns are
        # read without touching its overflow pages.
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            inbox_id TEXT,
            thread_id TEXT,
            origin TEXT NOT NULL,
            received_at REAL NOT NULL,
            size INTEGER NOT NULL,
            payload BLOB NOT NULL
        )""",
        """CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            seq INTEGER NOT NULL REFERENCES events (seq),
            sink TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            dead_at REAL,
            UNIQUE (seq, sink)
        )""",
        "CREATE INDEX deliveries_by_sink ON deliveries (sink, state, seq)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


class _Corrupt(Exception):
    """SQLite says the file is not a sound database; only this moves a file aside."""


def prepare_directory(path: Path) -> None:
    """Create the database's directory (0700) when missing."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot open state database {path}: cannot create directory {path.parent}: "
            f"{exc.strerror or exc}"
        ) from None


def acquire_lock(path: Path) -> int:
    """Take the exclusive lock on ``<path>.lock`` and write our pid into it; return its fd.

    flock, not a pid file check: the kernel drops the lock when the holder dies, however it dies.
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot open lock file {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLockedError(
            f"state {path} is in use by another openmail-bridge (pid {holder})"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock {lock_path}: {exc.strerror or exc}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def connect(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    """Open a connection with the store's pragmas; autocommit mode, transactions are explicit."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
    try:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise StoreError(f"cannot use state database {path}: WAL mode unavailable ({mode})")
        # FULL: a commit is on disk when COMMIT returns, which is what an acknowledgement promises.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        if query_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration]) -> int:
    """Apply the missing migrations in one transaction; return the version found.

    Raises:
        StoreVersionError: the database is newer than ``migrations``.
    """
    target = len(migrations)
    conn.execute("BEGIN IMMEDIATE")
    try:
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        if found > target:
            raise StoreVersionError(
                f"state database {path} has schema version {found}, newer than this "
                f"openmail-bridge understands (version {target}); upgrade openmail-bridge"
            )
        for migration in migrations[found:]:
            for statement in migration:
                conn.execute(statement)
        if found != target:
            conn.execute(f"PRAGMA user_version = {target:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if found != target:
        log.info("store.migrated", path=str(path), from_version=found, to_version=target)
    return int(found)


def is_corrupt(exc: BaseException) -> bool:
    """Whether SQLite reports the file itself as damaged (not busy, locked or unreadable)."""
    return isinstance(exc, sqlite3.DatabaseError) and (exc.sqlite_errorcode & 0xFF) in (
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_NOTADB,
    )


def _open_checked(
    path: Path, *, quick_check: bool, migrations: Sequence[Migration]
) -> sqlite3.Connection:
    try:
        conn = connect(path)
    except sqlite3.DatabaseError as exc:
        if is_corrupt(exc):
            raise _Corrupt(str(exc)) from None
        raise
    try:
        if quick_check:
            (verdict,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if verdict != "ok":
                raise _Corrupt(f"quick_check: {verdict}")
        migrate(conn, path, migrations)
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_corrupt(exc):
            raise _Corrupt(str(exc)) from None
        raise
    except BaseException:
        conn.close()
        raise
    return conn


def move_aside(path: Path) -> Path:
    """Rename the database and its -wal/-shm to ``<name>.corrupt-<UTC time>``; return the new name."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The WAL goes first: a stale WAL left beside a fresh database would be replayed into it.
    for suffix in ("-wal", "-shm", ""):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{target}{suffix}")
    return target


def open_database(
    path: Path, *, recover: bool, migrations: Sequence[Migration] = MIGRATIONS
) -> sqlite3.Connection:
    """Open, check and migrate the database; with ``recover``, replace a corrupt one.

    Raises:
        StoreVersionError: the database is newer than this code.
        StoreError: it cannot be opened (permissions, locks, I/O), or it is corrupt and
            ``recover`` is false. Nothing is moved or reset in either case.
    """
    try:
        try:
            return _open_checked(path, quick_check=recover, migrations=migrations)
        except _Corrupt as exc:
            if not recover:
                raise StoreError(
                    f"state database {path} is corrupt ({exc}); the daemon moves it aside "
                    "when it next starts"
                ) from None
            moved = move_aside(path)
            # Loud on purpose: events that were held in the moved file are no longer delivered.
            log.error(
                "store.corrupt_moved_aside", path=str(path), moved_to=str(moved), reason=str(exc)
            )
            return _open_checked(path, quick_check=False, migrations=migrations)
    except (sqlite3.Error, _Corrupt) as exc:
        raise StoreError(f"cannot open state database {path}: {exc}") from None


def read_state(conn: sqlite3.Connection) -> tuple[int, str | None, int]:
    """The facts the store keeps in memory: (spool bytes, cursor, data_version)."""
    (spool,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(spool), None if row is None else str(row[0]), int(version)
