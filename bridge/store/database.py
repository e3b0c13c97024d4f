"""The state database file and its connections: creating the directory, the ``<db>.lock`` that
makes one process the owner, the pragmas, migrating forward, moving aside a file SQLite reports as
corrupt (never one that merely cannot be opened, nor one that is no SQLite file at all: that is a
wrong path, refused), and transaction control.

Plain blocking functions, called on the store's threads (no asyncio here).
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
from bridge.state_files import LOCK, MOVED_ASIDE, SHM, WAL, foreign_file
from bridge.store import queries
from bridge.store.schema import MIGRATIONS, Migration

log = structlog.get_logger(__name__)

BUSY_TIMEOUT: Final = 5.0
"""Seconds a write waits for another connection's write lock (the daemon and the ``dlq`` command
share the file) before it fails with SQLITE_BUSY."""

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
    lock_path = path.with_name(path.name + LOCK)
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
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: said with the file, not as a bare errno
        os.close(fd)
        raise StoreError(f"cannot write lock file {lock_path}: {exc.strerror or exc}") from None
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
        _require_json(conn)
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise StoreError(f"cannot use state database {path}: WAL mode unavailable ({mode})")
        # FULL: a commit is on disk when COMMIT returns, which is what an acknowledgement promises.
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        # Debian's SQLite is built to zero every deleted page (SECURE_DELETE): each delivered
        # event's freed pages were written to the WAL again, a third of its pages. FAST zeroes
        # what a change writes anyway; freed pages keep their bytes until reused, in a file
        # only this user reads.
        conn.execute("PRAGMA secure_delete = FAST")
        if query_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _require_json(conn: sqlite3.Connection) -> None:
    """Batches travel to SQLite as JSON arrays (json_each): built in since SQLite 3.38, and in
    most earlier builds as the JSON1 extension."""
    try:
        conn.execute("SELECT json_valid('[]')").fetchone()
    except sqlite3.OperationalError:
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} has no JSON functions, which the state database"
            " needs: use SQLite 3.38 or later (or a build with JSON1)"
        ) from None


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
    target = path.with_name(f"{path.name}{MOVED_ASIDE}{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{MOVED_ASIDE}{stamp}-{n}")
    # The WAL goes first: a stale WAL left beside a fresh database would be replayed into it.
    for suffix in (WAL, SHM, ""):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").rename(f"{target}{suffix}")
    return target


def moved_aside(path: Path) -> list[Path]:
    """The corrupt databases :func:`move_aside` left beside ``path`` (not their -wal/-shm): until
    an operator removes them, each may hold events that were never delivered."""
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    prefix = path.name + MOVED_ASIDE
    found = (n for n in names if n.startswith(prefix) and not n.endswith((WAL, SHM)))
    return sorted(path.with_name(n) for n in found)


def open_database(
    path: Path, *, recover: bool, migrations: Sequence[Migration] = MIGRATIONS
) -> sqlite3.Connection:
    """Open, check and migrate the database; with ``recover``, replace a corrupt one.

    Raises:
        StoreVersionError: the database is newer than this code.
        StoreError: it cannot be opened (permissions, locks, I/O), it is corrupt and
            ``recover`` is false, or it is no SQLite file at all (``foreign_file``). Nothing is
            moved or reset in any of these cases.
    """
    try:
        try:
            return _open_checked(path, quick_check=recover, migrations=migrations)
        except _Corrupt as exc:
            # SQLite says "not a database" of any file at all: one that does not even begin
            # with its header is a wrong state.path (the config file, say), not a database
            # that was damaged. It is refused, never moved: the name is the operator's file's.
            if (problem := foreign_file(path)) is not None:
                raise StoreError(
                    f"cannot open state database: {problem}; it was left as it is"
                ) from None
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
        conn = open_database(path, recover=exclusive)
        try:
            queries.prepare_writer(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open state database {path}: {exc}") from None
        return lock_fd, conn
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise


def opening_state(conn: sqlite3.Connection, history: int | None) -> queries.State:
    """What the store keeps in memory (:func:`bridge.store.queries.read_state`), read as it
    opens; with ``history``, the history first trimmed to that bound, so that a lowered
    ``state.history`` (0: none) drops the payloads kept before at start, not at the next delivery.
    A trim that fails (a full disk) leaves it to that delivery."""
    state = queries.read_state(conn)
    if history is None or state.history_rows <= history:
        return state
    try:
        begin(conn)
        try:
            rows = queries.trim_history(conn, state.history_rows, history)
            conn.execute("COMMIT")
        finally:
            rollback(conn)
    except sqlite3.Error as exc:
        log.warning("store.history_not_trimmed", keep=history, reason=str(exc))
        return state
    return state._replace(history_rows=rows)


def open_reader(path: Path) -> sqlite3.Connection:
    try:
        return connect(path, query_only=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state database {path}: {exc}") from None


def begin(conn: sqlite3.Connection) -> None:
    rollback(conn)  # a ROLLBACK that failed earlier (I/O error) left a transaction open
    conn.execute("BEGIN IMMEDIATE")


def rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (SQLITE_FULL), and a failing ROLLBACK must
    # not hide the error that led to it.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


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
