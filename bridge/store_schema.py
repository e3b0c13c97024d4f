"""The state database on disk: schema and migrations, opening it safely, and the SQL each store
operation runs.

Plain blocking functions of a connection, called on the store's threads (no asyncio here).
Opening creates the directory, takes ``<db>.lock``, sets the pragmas, migrates
``PRAGMA user_version`` forward, and moves aside a database SQLite reports as corrupt (never one
that merely cannot be opened). :mod:`bridge.store` owns batching, bounds and the cursor rules.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import structlog

from bridge.errors import StoreError, StoreLockedError, StoreVersionError
from bridge.events import Event

# Longer than the house ~400 lines on purpose: the append-only migrations and the SQL written
# against them are read together, and splitting them would put a schema in two places.

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
    (
        # What a seen event was: its content identity (bridge.events.content_identity) and inbox,
        # so a known id arriving with other content or for another inbox is a conflict, not a
        # duplicate. Rows from before this migration keep NULL: unknown, never a conflict.
        "ALTER TABLE seen ADD COLUMN content_id TEXT",
        "ALTER TABLE seen ADD COLUMN inbox_id TEXT",
        # The id sinks send, when it is not the dedup key: a payload without event_id is keyed by
        # its content and sent under the webhook's X-Event-Id. Partial: almost every row has none.
        "ALTER TABLE seen ADD COLUMN sent_id TEXT",
        "CREATE INDEX seen_by_sent_id ON seen (sent_id) WHERE sent_id IS NOT NULL",
        # Conflicting events, never delivered, kept for an operator (`dlq list`). payload is NULL
        # when it did not fit the spool bound; size counts toward it like a held event's.
        """CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            reason TEXT NOT NULL,
            origin TEXT NOT NULL,
            type TEXT NOT NULL,
            inbox_id TEXT,
            received_at REAL NOT NULL,
            content_id TEXT,
            quarantined_at REAL NOT NULL,
            size INTEGER NOT NULL,
            payload BLOB
        )""",
        "CREATE INDEX quarantine_by_key ON quarantine (dedup_key)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

QUARANTINE_MAX_ROWS: Final = 1000
"""Conflicts kept for inspection. Past this many, a conflict is still answered, counted and
logged, but not stored: a stream of them must not grow the database without limit."""

_FILE_MODE: Final = 0o600


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


def create_private(path: Path) -> None:
    """Create the database file 0600 when it does not exist, whatever the umask.

    It holds message bodies. SQLite creates its ``-wal`` and ``-shm`` with the mode of the main
    file, so they are private too. An existing file keeps the mode it has: that is the
    operator's to choose.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"cannot open state database {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, _FILE_MODE)  # the umask may have taken bits the owner needs
    finally:
        os.close(fd)


def connect(path: Path, *, query_only: bool = False) -> sqlite3.Connection:
    """Open a connection with the store's pragmas; autocommit mode, transactions are explicit."""
    create_private(path)
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
    """Rename the database and its -wal/-shm to ``<name>.corrupt-<UTC time>``; return that."""
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


def open_writer(path: Path, *, exclusive: bool) -> tuple[int | None, sqlite3.Connection]:
    """Create the directory, take the lock (``exclusive``), open the database; (lock fd, conn)."""
    prepare_directory(path)
    lock_fd = acquire_lock(path) if exclusive else None
    try:
        # Only the lock holder may move a corrupt file aside: a `dlq` command running beside
        # the daemon must never pull the daemon's database out from under it.
        return lock_fd, open_database(path, recover=exclusive)
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise


def open_reader(path: Path) -> sqlite3.Connection:
    try:
        return connect(path, query_only=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state database {path}: {exc}") from None


# -- the SQL of store operations ---------------------------------------------------------------

_DELIVERY_COLUMNS = """
    SELECT d.id, d.seq, d.sink, e.event_id, e.type, e.inbox_id, e.thread_id, e.origin,
           e.received_at, e.payload, d.attempts, d.last_error, d.dead_at
    FROM deliveries AS d JOIN events AS e ON e.seq = d.seq"""
"""Row layout of every query that returns deliveries (``bridge.store`` reads it by position)."""

PENDING_SQL: Final = f"""{_DELIVERY_COLUMNS}
    WHERE d.sink = ? AND d.state = 'pending' AND d.seq > ? ORDER BY d.seq LIMIT ?"""
# The dlq filters are optional: a NULL parameter matches every row.
DLQ_LIST_SQL: Final = f"""{_DELIVERY_COLUMNS}
    WHERE d.state = 'dead' AND (:sink IS NULL OR d.sink = :sink)
    AND (:event_id IS NULL OR e.event_id = :event_id) ORDER BY d.seq, d.sink"""
DLQ_RETRY_SQL: Final = """UPDATE deliveries SET state = 'pending', attempts = 0, dead_at = NULL
    WHERE state = 'dead' AND (:sink IS NULL OR sink = :sink)
    AND (:event_id IS NULL OR seq IN (SELECT seq FROM events WHERE event_id = :event_id))"""
DLQ_PURGE_SQL: Final = """DELETE FROM deliveries
    WHERE state = 'dead' AND (:sink IS NULL OR sink = :sink)
    AND (:event_id IS NULL OR seq IN (SELECT seq FROM events WHERE event_id = :event_id))"""
DROP_SINK_SQL: Final = "DELETE FROM deliveries WHERE sink = :sink"
RECORD_ATTEMPT_SQL: Final = (
    "UPDATE deliveries SET attempts = ?, last_error = ? WHERE id = ? AND state = 'pending'"
)
DEAD_LETTER_SQL: Final = (
    "UPDATE deliveries SET state = 'dead', attempts = ?, last_error = ?, dead_at = ? WHERE id = ?"
)
SINK_COUNTS_SQL: Final = """SELECT sink, SUM(state = 'pending'), SUM(state = 'dead')
    FROM deliveries GROUP BY sink ORDER BY sink"""
LAST_EVENT_SQL: Final = "SELECT value FROM meta WHERE key = 'last_event_at'"
# Quarantined payloads count toward the spool bound like held ones.
SPOOL_SQL: Final = """SELECT (SELECT COALESCE(SUM(size), 0) FROM events)
    + (SELECT COALESCE(SUM(size), 0) FROM quarantine)"""
QUARANTINE_LIST_SQL: Final = """SELECT id, event_id, dedup_key, reason, origin, type, inbox_id,
    received_at, content_id, quarantined_at, payload FROM quarantine
    WHERE (:event_id IS NULL OR event_id = :event_id) ORDER BY id"""
QUARANTINE_PURGE_SQL: Final = (
    "DELETE FROM quarantine WHERE (:event_id IS NULL OR event_id = :event_id)"
)
QUARANTINE_COUNT_SQL: Final = "SELECT COUNT(*) FROM quarantine"


def begin(conn: sqlite3.Connection) -> None:
    rollback(conn)  # a ROLLBACK that failed earlier (I/O error) left a transaction open
    conn.execute("BEGIN IMMEDIATE")


def rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (SQLITE_FULL), and a failing ROLLBACK must
    # not hide the error that led to it.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def read_state(conn: sqlite3.Connection) -> tuple[int, str | None, int]:
    """The facts the store keeps in memory: (spool bytes, cursor, data_version)."""
    (spool,) = conn.execute(SPOOL_SQL).fetchone()
    row = conn.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    (version,) = conn.execute("PRAGMA data_version").fetchone()
    return int(spool), None if row is None else str(row[0]), int(version)


def set_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        conn.execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )


KNOWN_KEY: Final = 1
ID_TAKEN: Final = 2
# One statement, first hit wins: the dedup key seen (with what it was), else the id sinks would
# send already in use under another key (as a seen key or sent id, or by a held event). The
# first column is KNOWN_KEY (1) or ID_TAKEN (2).
_IDENTITY_SQL: Final = """
    SELECT 1, content_id, inbox_id FROM seen WHERE event_id = :key
    UNION ALL SELECT 2, NULL, NULL FROM seen WHERE sent_id = :id
    UNION ALL SELECT 2, NULL, NULL FROM seen WHERE :id != :key AND event_id = :id
    UNION ALL SELECT CASE WHEN :id = :key THEN 1 ELSE 2 END, NULL, NULL
        FROM events WHERE event_id = :id
    LIMIT 1"""


def known_identity(
    conn: sqlite3.Connection, event: Event
) -> tuple[int, str | None, str | None] | None:
    """What the store knows of ``event``'s dedup key and id; None when both are new.

    ``(KNOWN_KEY, content_id, inbox_id)``: the key was seen (the content NULL when unknown, a row
    from before migration 2 or a held event without its seen row); ``(ID_TAKEN, None, None)``:
    the key is new but ``event.event_id`` is already in use under another key.
    """
    row = conn.execute(_IDENTITY_SQL, {"key": event.dedup_key, "id": event.event_id}).fetchone()
    return None if row is None else (int(row[0]), row[1], row[2])


def insert_event(
    conn: sqlite3.Connection, event: Event, sinks: Sequence[str], *, seen_at: float
) -> tuple[int, list[int]]:
    """Record a new event: its seen id, its row, one pending row per sink; (seq, row ids).

    With no sinks the event row only numbers the event and is deleted again: nothing is held.
    """
    payload = event.raw if sinks else b""
    sent_id = None if event.event_id == event.dedup_key else event.event_id
    conn.execute(
        "INSERT INTO seen (event_id, seen_at, content_id, inbox_id, sent_id)"
        " VALUES (?, ?, ?, ?, ?)",
        (event.dedup_key, seen_at, event.content_id, event.inbox_id, sent_id),
    )
    row = (event.event_id, event.type, event.inbox_id, event.thread_id, event.origin.value)
    seq = _rowid(
        conn.execute(
            "INSERT INTO events (event_id, type, inbox_id, thread_id, origin, received_at, size,"
            " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, event.received_at, len(payload), payload),
        )
    )
    sql = "INSERT INTO deliveries (seq, sink) VALUES (?, ?)"
    ids = [_rowid(conn.execute(sql, (seq, sink))) for sink in sinks]
    if not sinks:
        conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
    return seq, ids


def quarantine_event(
    conn: sqlite3.Connection, event: Event, reason: str, *, keep_payload: bool, at: float
) -> tuple[bool, int]:
    """Record a conflicting event; (whether it is in the quarantine, payload bytes added).

    One row per dedup key and content: OpenMail's retries of one conflicting event add nothing.
    """
    held = conn.execute(
        "SELECT 1 FROM quarantine WHERE dedup_key = ? AND content_id IS ?",
        (event.dedup_key, event.content_id),
    ).fetchone()
    if held is not None:
        return True, 0
    (count,) = conn.execute(QUARANTINE_COUNT_SQL).fetchone()
    if count >= QUARANTINE_MAX_ROWS:
        return False, 0
    payload = event.raw if keep_payload else None
    size = len(event.raw) if keep_payload else 0
    conn.execute(
        "INSERT INTO quarantine (event_id, dedup_key, reason, origin, type, inbox_id,"
        " received_at, content_id, quarantined_at, size, payload)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.event_id,
            event.dedup_key,
            reason,
            event.origin.value,
            event.type,
            event.inbox_id,
            event.received_at,
            event.content_id,
            at,
            size,
            payload,
        ),
    )
    return True, size


def purge_quarantine(conn: sqlite3.Connection, event_id: str | None) -> tuple[int, int]:
    """Delete quarantined events (all, or those of ``event_id``); (count, spool bytes after)."""
    count = conn.execute(QUARANTINE_PURGE_SQL, {"event_id": event_id}).rowcount
    (spool,) = conn.execute(SPOOL_SQL).fetchone()
    return count, int(spool)


def _rowid(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:  # an INSERT always sets it; this only narrows the type
        raise StoreError("INSERT reported no rowid")
    return cursor.lastrowid


def delete_delivery(conn: sqlite3.Connection, delivery_id: int) -> int:
    """Delete one delivery row, and its event when that was the last row; return bytes freed."""
    row = conn.execute("SELECT seq FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
    if row is None:
        return 0  # already gone (its sink dropped, or purged, meanwhile)
    conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
    held = conn.execute(
        "SELECT size FROM events WHERE seq = ?1 AND NOT EXISTS"
        " (SELECT 1 FROM deliveries WHERE seq = ?1)",
        row,
    ).fetchone()
    if held is None:
        return 0
    conn.execute("DELETE FROM events WHERE seq = ?", row)
    return int(held[0])


def delete_deliveries(
    conn: sqlite3.Connection, sql: str, params: Mapping[str, str | None]
) -> tuple[int, int]:
    """Run a bulk DELETE of delivery rows, then drop events left without rows; (count, spool)."""
    count = conn.execute(sql, params).rowcount
    conn.execute(
        "DELETE FROM events WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d"
        " WHERE d.seq = events.seq)"
    )
    (spool,) = conn.execute(SPOOL_SQL).fetchone()
    return count, int(spool)


def prune_seen(conn: sqlite3.Connection, *, before: float, limit: int) -> int:
    """Forget up to ``limit`` ids seen before ``before`` whose event is no longer held."""
    # A held event's row carries the id it is sent under: sent_id when set, else the key.
    return conn.execute(
        "DELETE FROM seen WHERE event_id IN (SELECT s.event_id FROM seen AS s"
        " WHERE s.seen_at < ? AND NOT EXISTS (SELECT 1 FROM events AS e"
        " WHERE e.event_id = COALESCE(s.sent_id, s.event_id)) LIMIT ?)",
        (before, limit),
    ).rowcount


def probe(conn: sqlite3.Connection) -> None:
    """Commit and undo a write of a few pages; raises the sqlite3 error while writes fail.

    A few pages, not a tiny row: a tiny row fits in a page the database already has and would
    "succeed" on a full disk.
    """
    begin(conn)
    try:
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', zeroblob(16384))")
        conn.execute("DELETE FROM meta WHERE key = 'probe'")
        conn.execute("COMMIT")
    finally:
        rollback(conn)
