"""The durable spool: accepted events, dedup ids, per-sink delivery rows, dead letters and the
WebSocket replay cursor, in one SQLite database (WAL) that is the bridge's only state.

One writer thread owns the write connection and commits every write of a batch in one
transaction (group commit: one fsync for many events). Reads use a second connection on a
second thread, so a sink worker asking for work never waits behind an fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from bridge import store_schema
from bridge.errors import SpoolFullError, StoreError, StoreUnavailableError
from bridge.events import Event, Origin

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_MAX_BATCH: Final = 1000
_PRUNE_CHUNK: Final = 1000
_DISK_CACHE_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    max_bytes: int = 1 << 30  # spool bound: payload bytes of events still held
    min_free: int = 256 << 20  # free-disk floor of the filesystem holding the database
    dedup_window: float = 7 * 86400  # seconds a seen event_id is remembered


_DEFAULT_LIMITS: Final = StoreLimits()


class AcceptOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One (event, sink) outbox row, with what the sink needs to deliver it."""

    id: int
    seq: int
    sink: str
    event_id: str
    type: str
    inbox_id: str | None
    thread_id: str | None
    origin: Origin
    received_at: float
    payload: bytes
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AcceptResult:
    outcome: AcceptOutcome
    seq: int | None  # only when ACCEPTED
    deliveries: tuple[Delivery, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    delivery: Delivery
    error: str
    dead_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkCounts:
    pending: int
    dead: int


_PENDING_SQL: Final = """
    SELECT d.id, d.seq, d.sink, e.event_id, e.type, e.inbox_id, e.thread_id, e.origin,
           e.received_at, e.payload, d.attempts, d.last_error, d.dead_at
    FROM deliveries AS d JOIN events AS e ON e.seq = d.seq
    WHERE d.sink = ? AND d.state = 'pending' AND d.seq > ? ORDER BY d.seq LIMIT ?
"""
# The dlq commands' filters are optional: a NULL parameter matches every row.
_DLQ_LIST_SQL: Final = """
    SELECT d.id, d.seq, d.sink, e.event_id, e.type, e.inbox_id, e.thread_id, e.origin,
           e.received_at, e.payload, d.attempts, d.last_error, d.dead_at
    FROM deliveries AS d JOIN events AS e ON e.seq = d.seq
    WHERE d.state = 'dead' AND (:sink IS NULL OR d.sink = :sink)
    AND (:event_id IS NULL OR e.event_id = :event_id)
    ORDER BY d.seq, d.sink
"""
_DLQ_RETRY_SQL: Final = """
    UPDATE deliveries SET state = 'pending', attempts = 0, dead_at = NULL
    WHERE state = 'dead' AND (:sink IS NULL OR sink = :sink)
    AND (:event_id IS NULL OR seq IN (SELECT seq FROM events WHERE event_id = :event_id))
"""
_DLQ_PURGE_SQL: Final = """
    DELETE FROM deliveries
    WHERE state = 'dead' AND (:sink IS NULL OR sink = :sink)
    AND (:event_id IS NULL OR seq IN (SELECT seq FROM events WHERE event_id = :event_id))
"""
_DROP_SINK_SQL: Final = "DELETE FROM deliveries WHERE sink = :sink"


def _execute(tx: _Tx, *, sql: str, params: Sequence[object] | dict[str, str | None]) -> int:
    """Run one statement in the batch's transaction; return the rows it changed."""
    return tx.conn.execute(sql, params).rowcount


def _rowid(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:  # an INSERT always sets it; this only narrows the type
        raise StoreError("INSERT reported no rowid")
    return cursor.lastrowid


def _delivery(row: tuple[Any, ...]) -> Delivery:
    return Delivery(
        id=row[0],
        seq=row[1],
        sink=row[2],
        event_id=row[3],
        type=row[4],
        inbox_id=row[5],
        thread_id=row[6],
        origin=Origin(row[7]),
        received_at=row[8],
        payload=bytes(row[9]),
        attempts=row[10],
        last_error=row[11],
    )


class _Tx:
    """What one write transaction changes in the store's memory; applied only once it commits."""

    __slots__ = ("conn", "cursor", "data_version", "last_event_at", "spool", "ws_gap")

    def __init__(self, conn: sqlite3.Connection, spool: int, cursor: str | None) -> None:
        self.conn = conn
        self.spool = spool
        self.cursor = cursor
        self.ws_gap: str | None = None
        self.data_version = 0
        self.last_event_at: float | None = None


@dataclass(slots=True)
class _Op:
    fn: Callable[[_Tx], object]
    future: asyncio.Future[Any]
    ws_event_id: str | None  # a WebSocket accept: a refusal must hold the cursor back


@dataclass(frozen=True, slots=True)
class _Resources:
    writer: ThreadPoolExecutor  # owns wconn: every write, in call order
    reader: ThreadPoolExecutor  # owns rconn: reads, concurrent with writes thanks to WAL
    wconn: sqlite3.Connection
    rconn: sqlite3.Connection
    lock_fd: int | None


def _begin(conn: sqlite3.Connection) -> None:
    _rollback(conn)  # a ROLLBACK that failed earlier (I/O error) left a transaction open
    conn.execute("BEGIN IMMEDIATE")


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite rolls back by itself after some errors (SQLITE_FULL); a failing ROLLBACK must not
    # hide the error that caused it.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _open_writer(path: Path, exclusive: bool) -> tuple[int | None, sqlite3.Connection]:
    store_schema.prepare_directory(path)
    lock_fd = store_schema.acquire_lock(path) if exclusive else None
    try:
        # Only the lock holder may move a corrupt file aside: a `dlq` command running beside
        # the daemon must never pull the daemon's database out from under it.
        return lock_fd, store_schema.open_database(path, recover=exclusive)
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise


def _open_reader(path: Path) -> sqlite3.Connection:
    try:
        return store_schema.connect(path, query_only=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state database {path}: {exc}") from None


class Store:
    """The durable spool. Create with :meth:`open`, finish with :meth:`close`.

    ``commits`` counts committed write transactions (group-commit metric).
    """

    def __init__(
        self,
        path: Path,
        limits: StoreLimits,
        res: _Resources,
        state: tuple[int, str | None, int],
        *,
        exclusive: bool,
        probe_interval: float,
    ) -> None:
        self.path = path
        self.limits = limits
        self.commits = 0
        self._res = res
        self._spool_bytes, self._cursor, self._data_version = state
        self._exclusive = exclusive
        self._probe_interval = probe_interval
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._ws_gap: str | None = None  # first refused WebSocket event id, see _tx_cursor
        self._failure: str | None = None  # why writes fail; None while writable
        self._probe: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # replaced after each set: wakes wait_room/wait_writable
        self._disk = (-math.inf, 0)
        self._closed = False
        self._writer_task = asyncio.create_task(self._write_loop(), name="store-writer")

    @classmethod
    async def open(
        cls,
        path: Path,
        limits: StoreLimits = _DEFAULT_LIMITS,
        *,
        exclusive: bool = True,
        probe_interval: float = 0.5,
        prune_interval: float = 60.0,
    ) -> Store:
        """Open (creating or migrating) the state database at ``path``.

        Args:
            limits: spool bounds and the dedup window.
            exclusive: take ``<path>.lock`` and run the background prune and write probe (the
                daemon); false for commands that inspect state while the daemon runs.
            probe_interval: seconds between write probes after a write failed.
            prune_interval: seconds between prunes of seen ids older than the dedup window.

        Raises:
            StoreLockedError: another process holds the state.
            StoreVersionError: the database is newer than this code.
            StoreError: the database cannot be opened; nothing was moved or reset.
        """
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        reader = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        wconn = None
        try:
            lock_fd, wconn = await loop.run_in_executor(writer, _open_writer, path, exclusive)
            state = await loop.run_in_executor(writer, store_schema.read_state, wconn)
            rconn = await loop.run_in_executor(reader, _open_reader, path)
        except BaseException:
            if wconn is not None:
                await loop.run_in_executor(writer, wconn.close)
                if lock_fd is not None:
                    os.close(lock_fd)
            writer.shutdown()
            reader.shutdown()
            raise
        store = cls(
            path,
            limits,
            _Resources(writer, reader, wconn, rconn, lock_fd),
            state,
            exclusive=exclusive,
            probe_interval=probe_interval,
        )
        if exclusive:
            store._pruner = asyncio.create_task(store._prune_loop(prune_interval))
        log.info("store.opened", path=str(path), exclusive=exclusive, spool_bytes=state[0])
        return store

    async def close(self) -> None:
        """Finish queued writes, stop background work, close the database, release the lock."""
        if self._closed:
            return
        self._closed = True
        self._notify()
        for task in (self._pruner, self._probe):
            if task is not None:
                task.cancel()
        self._queue.put_nowait(None)
        # wait, not await: close still finishes if a forced shutdown cancelled the writer task.
        await asyncio.wait([t for t in (self._writer_task, self._pruner, self._probe) if t])
        res = self._res
        await self._loop.run_in_executor(res.writer, res.wconn.close)
        await self._loop.run_in_executor(res.reader, res.rconn.close)
        res.writer.shutdown()
        res.reader.shutdown()
        if res.lock_fd is not None:
            os.close(res.lock_fd)
        log.info("store.closed", path=str(self.path))

    # -- state in memory ---------------------------------------------------------------------

    @property
    def cursor(self) -> str | None:
        """The WebSocket replay cursor: the last WebSocket event durably accepted or recognised
        as a duplicate, with no refused WebSocket event before it."""
        return self._cursor

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes

    @property
    def writable(self) -> bool:
        """False after a write failed, until a probe write succeeds."""
        return self._failure is None

    @property
    def has_room(self) -> bool:
        return (
            self._spool_bytes < self.limits.max_bytes and self._free_disk() >= self.limits.min_free
        )

    async def wait_writable(self) -> None:
        while not self.writable:
            await self._wait_changed(None)

    async def wait_room(self) -> None:
        while not self.has_room:
            # Free disk changes without telling us, and another process (the `dlq` command)
            # may purge rows: look again every second.
            await self._wait_changed(_DISK_CACHE_SECONDS)
            with contextlib.suppress(StoreUnavailableError):
                await self._write(lambda tx: None)  # reloads spool_bytes if another process wrote

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_changed(self, timeout: float | None) -> None:
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await changed.wait()

    def _free_disk(self) -> int:
        checked, free = self._disk
        now = time.monotonic()
        if now - checked > _DISK_CACHE_SECONDS:
            try:
                st = os.statvfs(self.path.parent)
                free = st.f_bavail * st.f_frsize
            except OSError:
                free = self.limits.min_free  # unknown: let SQLite report a real failure
            self._disk = (now, free)
        return free

    # -- writes ------------------------------------------------------------------------------

    async def accept(self, event: Event, sinks: Sequence[str]) -> AcceptResult:
        """Record ``event`` unless already seen, with one pending delivery per sink.

        Returns once the transaction is durably committed. The write is queued before this
        coroutine first suspends, so accepts started in order commit in order.

        Raises:
            SpoolFullError: over ``max_bytes`` or under ``min_free``; nothing was written.
            StoreUnavailableError: the write failed; nothing was written.
        """
        ws = event.event_id if event.origin is Origin.WEBSOCKET else None
        op = functools.partial(self._tx_accept, event=event, sinks=tuple(dict.fromkeys(sinks)))
        return await self._write(op, ws_event_id=ws)

    async def clear_cursor(self) -> None:
        await self._write(self._tx_clear_cursor)

    async def mark_delivered(self, delivery_id: int) -> None:
        await self._write(functools.partial(self._tx_delivered, delivery_id=delivery_id))

    async def record_attempt(self, delivery_id: int, *, attempts: int, error: str) -> None:
        sql = (
            "UPDATE deliveries SET attempts = ?, last_error = ? WHERE id = ? AND state = 'pending'"
        )
        await self._write(
            functools.partial(_execute, sql=sql, params=(attempts, error, delivery_id))
        )

    async def dead_letter(self, delivery_id: int, *, error: str, attempts: int) -> None:
        sql = "UPDATE deliveries SET state = 'dead', attempts = ?, last_error = ?, dead_at = ? WHERE id = ?"
        params = (attempts, error, time.time(), delivery_id)
        await self._write(functools.partial(_execute, sql=sql, params=params))

    async def dlq_retry(self, *, sink: str | None = None, event_id: str | None = None) -> int:
        """Move matching dead rows back to pending with attempts reset; they keep their seq, so
        a redriven event is delivered before later events of its thread. Returns the count."""
        params = {"sink": sink, "event_id": event_id}
        return await self._write(functools.partial(_execute, sql=_DLQ_RETRY_SQL, params=params))

    async def dlq_purge(self, *, sink: str | None = None, event_id: str | None = None) -> int:
        """Delete matching dead rows (never pending ones); returns the count."""
        params = {"sink": sink, "event_id": event_id}
        return await self._write(
            functools.partial(self._tx_drop, sql=_DLQ_PURGE_SQL, params=params)
        )

    async def drop_sink(self, sink: str) -> int:
        """Delete every row, pending or dead, of ``sink`` (one removed from the config)."""
        params = {"sink": sink}
        return await self._write(
            functools.partial(self._tx_drop, sql=_DROP_SINK_SQL, params=params)
        )

    async def prune_seen(self) -> int:
        """Forget seen ids older than the dedup window, in small transactions; returns the count.

        Ids of events still held are kept: their row is the dedup record until it goes.
        """
        total = 0
        while (n := await self._write(self._tx_prune)) == _PRUNE_CHUNK:
            total += n
        total += n
        if total:
            log.info("store.seen_pruned", path=str(self.path), count=total)
        return total

    def _write(
        self, fn: Callable[[_Tx], _T], *, ws_event_id: str | None = None
    ) -> asyncio.Future[_T]:
        # Synchronous on purpose: the queue position is taken when the caller runs, not later.
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        future: asyncio.Future[_T] = self._loop.create_future()
        self._queue.put_nowait(_Op(fn, future, ws_event_id))
        return future

    async def _write_loop(self) -> None:
        batch: list[_Op] = []
        try:
            while (op := await self._queue.get()) is not None:
                batch = [op]
                while len(batch) < _MAX_BATCH and not self._queue.empty():
                    if (op := self._queue.get_nowait()) is None:
                        self._queue.put_nowait(None)
                        break
                    batch.append(op)
                await self._run_batch(batch)
        finally:
            closed = StoreError(f"state database {self.path} was closed before the write ran")
            while not self._queue.empty():
                if (op := self._queue.get_nowait()) is not None:
                    batch.append(op)
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(closed)

    async def _run_batch(self, batch: list[_Op]) -> None:
        if self._probe is not None:  # the probe decides when writing is worth trying again
            self._fail_batch(batch, f"state database {self.path} is not writable: {self._failure}")
            return
        try:
            results, tx = await self._loop.run_in_executor(
                self._res.writer, self._commit_batch, batch
            )
        except sqlite3.Error as exc:
            reason = f"cannot write state database {self.path}: {exc} ({exc.sqlite_errorname})"
            self._fail_batch(batch, reason)
            if self._failure is None:
                log.error(
                    "store.write_failed", path=str(self.path), reason=str(exc), batch=len(batch)
                )
            self._failure = reason
            if self._exclusive:
                self._probe = asyncio.create_task(self._probe_loop(), name="store-probe")
            self._notify()
            return
        except Exception as exc:  # a bug, not the disk: fail this batch, keep the writer alive
            log.exception("store.batch_failed", path=str(self.path), batch=len(batch))
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(StoreError(f"internal store error: {exc!r}"))
            return
        freed = tx.spool < self._spool_bytes
        self._spool_bytes, self._cursor, self._ws_gap = tx.spool, tx.cursor, tx.ws_gap
        self._data_version = tx.data_version
        self.commits += 1
        for op, result in zip(batch, results, strict=True):
            if op.future.done():
                continue  # the caller was cancelled; the write stands all the same
            if isinstance(result, StoreError):
                op.future.set_exception(result)
            else:
                op.future.set_result(result)
        if self._failure is not None:  # without a probe (exclusive=False) a success tells us
            self._writable_again()
        elif freed:
            self._notify()

    def _fail_batch(self, batch: list[_Op], reason: str) -> None:
        if self._ws_gap is None:
            self._ws_gap = next((op.ws_event_id for op in batch if op.ws_event_id), None)
        for op in batch:
            if not op.future.done():
                op.future.set_exception(StoreUnavailableError(f"{reason}; nothing was stored"))

    def _writable_again(self) -> None:
        self._failure = None
        log.info("store.writable_again", path=str(self.path))
        self._notify()

    async def _probe_loop(self) -> None:
        try:
            while True:
                await asyncio.sleep(self._probe_interval)
                with contextlib.suppress(sqlite3.Error):
                    await self._loop.run_in_executor(self._res.writer, self._probe_write)
                    break
        finally:
            self._probe = None
        self._writable_again()

    def _probe_write(self) -> None:
        # A few pages, not a tiny row: a tiny row fits in a page the database already has and
        # would "succeed" on a full disk.
        conn = self._res.wconn
        _begin(conn)
        try:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('probe', zeroblob(16384))")
            conn.execute("DELETE FROM meta WHERE key = 'probe'")
            conn.execute("COMMIT")
        finally:
            _rollback(conn)

    async def _prune_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.writable:
                with contextlib.suppress(StoreUnavailableError):
                    await self.prune_seen()

    # -- transactions (writer thread) --------------------------------------------------------

    def _commit_batch(self, batch: list[_Op]) -> tuple[list[object], _Tx]:
        conn = self._res.wconn
        _begin(conn)
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version != self._data_version:  # another process committed: reload what we cache
                spool, cursor, version = store_schema.read_state(conn)
                tx = _Tx(conn, spool, cursor)
            else:
                tx = _Tx(conn, self._spool_bytes, self._cursor)
            tx.data_version, tx.ws_gap = version, self._ws_gap
            cursor_before = tx.cursor
            results: list[object] = []
            for op in batch:
                try:
                    results.append(op.fn(tx))
                except SpoolFullError as exc:  # this op wrote nothing; the rest of the batch stands
                    if op.ws_event_id is not None and tx.ws_gap is None:
                        tx.ws_gap = op.ws_event_id
                    results.append(exc)
            # The cursor commits with the events it points past: saved apart, a crash in between
            # would replay (harmless) or, worse, skip an event that was never stored.
            if tx.cursor != cursor_before:
                self._tx_set_meta(tx, "cursor", tx.cursor)
            if tx.last_event_at is not None:
                self._tx_set_meta(tx, "last_event_at", tx.last_event_at)
            conn.execute("COMMIT")
        finally:
            _rollback(conn)
        return results, tx

    @staticmethod
    def _tx_set_meta(tx: _Tx, key: str, value: object) -> None:
        if value is None:
            tx.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            tx.conn.execute(
                "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def _tx_accept(self, tx: _Tx, *, event: Event, sinks: tuple[str, ...]) -> AcceptResult:
        conn, event_id = tx.conn, event.event_id
        seen = conn.execute(
            "SELECT 1 FROM seen WHERE event_id = ? UNION ALL SELECT 1 FROM events WHERE event_id = ?",
            (event_id, event_id),
        ).fetchone()
        if seen is not None:
            self._tx_cursor(tx, event)
            return AcceptResult(outcome=AcceptOutcome.DUPLICATE, seq=None, deliveries=())
        payload = event.raw if sinks else b""  # with no sink to deliver to, nothing is held
        self._check_room(tx.spool, len(payload))
        conn.execute("INSERT INTO seen VALUES (?, ?)", (event_id, time.time()))
        seq = _rowid(
            conn.execute(
                "INSERT INTO events (event_id, type, inbox_id, thread_id, origin, received_at, size,"
                " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event_id,
                    event.type,
                    event.inbox_id,
                    event.thread_id,
                    event.origin.value,
                    event.received_at,
                    len(payload),
                    payload,
                ),
            )
        )
        deliveries = []
        for sink in sinks:
            row = conn.execute("INSERT INTO deliveries (seq, sink) VALUES (?, ?)", (seq, sink))
            deliveries.append(
                Delivery(
                    id=_rowid(row),
                    seq=seq,
                    sink=sink,
                    event_id=event_id,
                    type=event.type,
                    inbox_id=event.inbox_id,
                    thread_id=event.thread_id,
                    origin=event.origin,
                    received_at=event.received_at,
                    payload=event.raw,
                    attempts=0,
                    last_error=None,
                )
            )
        if not sinks:  # the row only numbered the event
            conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
        tx.spool += len(payload)
        tx.last_event_at = event.received_at
        self._tx_cursor(tx, event)
        return AcceptResult(outcome=AcceptOutcome.ACCEPTED, seq=seq, deliveries=tuple(deliveries))

    def _check_room(self, spool: int, size: int) -> None:
        if spool + size > self.limits.max_bytes:
            raise SpoolFullError(
                f"spool is full: {spool} bytes held plus a {size}-byte event exceed "
                f"max_bytes={self.limits.max_bytes}"
            )
        if (free := self._free_disk()) < self.limits.min_free:
            raise SpoolFullError(
                f"free disk under {self.path.parent} is {free} bytes, below "
                f"min_free={self.limits.min_free}"
            )

    @staticmethod
    def _tx_cursor(tx: _Tx, event: Event) -> None:
        if event.origin is not Origin.WEBSOCKET:
            return
        if tx.ws_gap is not None:
            # A WebSocket event before this one was refused (spool full, write failed). The
            # cursor must not pass it, or the replay after reconnecting would skip it; it moves
            # again once that event comes back (replayed) and is stored.
            if tx.ws_gap != event.event_id:
                return
            tx.ws_gap = None
        tx.cursor = event.event_id

    @staticmethod
    def _tx_clear_cursor(tx: _Tx) -> None:
        tx.cursor = tx.ws_gap = None

    @staticmethod
    def _tx_delivered(tx: _Tx, *, delivery_id: int) -> None:
        row = tx.conn.execute("SELECT seq FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
        if row is None:
            return  # already gone (dropped or purged meanwhile)
        tx.conn.execute("DELETE FROM deliveries WHERE id = ?", (delivery_id,))
        (seq,) = row
        held = tx.conn.execute(
            "SELECT size FROM events WHERE seq = ? AND NOT EXISTS"
            " (SELECT 1 FROM deliveries WHERE seq = ?)",
            (seq, seq),
        ).fetchone()
        if held is not None:  # that was the event's last row: the event goes too
            tx.conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
            tx.spool -= held[0]

    @staticmethod
    def _tx_drop(tx: _Tx, *, sql: str, params: dict[str, str | None]) -> int:
        count = tx.conn.execute(sql, params).rowcount
        tx.conn.execute(
            "DELETE FROM events WHERE NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.seq = events.seq)"
        )
        (tx.spool,) = tx.conn.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()
        return count

    def _tx_prune(self, tx: _Tx) -> int:
        cutoff = time.time() - self.limits.dedup_window
        return tx.conn.execute(
            "DELETE FROM seen WHERE event_id IN (SELECT s.event_id FROM seen AS s"
            " WHERE s.seen_at < ? AND NOT EXISTS (SELECT 1 FROM events AS e"
            " WHERE e.event_id = s.event_id) LIMIT ?)",
            (cutoff, _PRUNE_CHUNK),
        ).rowcount

    # -- reads (reader thread) ---------------------------------------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        try:
            return await self._loop.run_in_executor(self._res.reader, fn, self._res.rconn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state database {self.path}: {exc}") from exc

    async def pending(self, sink: str, *, after_seq: int = 0, limit: int = 1000) -> list[Delivery]:
        """Pending (never dead) rows of ``sink`` with seq > ``after_seq``, ascending seq."""
        params = (sink, after_seq, limit)
        rows = await self._read(lambda c: c.execute(_PENDING_SQL, params).fetchall())
        return [_delivery(row) for row in rows]

    async def dlq_list(
        self, *, sink: str | None = None, event_id: str | None = None
    ) -> list[DeadLetter]:
        """Dead rows matching the filters, in seq (acceptance) order, payload included."""
        params = {"sink": sink, "event_id": event_id}
        rows = await self._read(lambda c: c.execute(_DLQ_LIST_SQL, params).fetchall())
        return [
            DeadLetter(delivery=_delivery(row), error=row[11] or "", dead_at=row[12])
            for row in rows
        ]

    async def sink_counts(self) -> dict[str, SinkCounts]:
        """Pending and dead rows per sink, for every sink holding rows, configured or not."""
        sql = (
            "SELECT sink, SUM(state = 'pending'), SUM(state = 'dead') FROM deliveries"
            " GROUP BY sink ORDER BY sink"
        )
        rows = await self._read(lambda c: c.execute(sql).fetchall())
        return {sink: SinkCounts(pending=p, dead=d) for sink, p, d in rows}

    async def last_event_at(self) -> float | None:
        """``received_at`` of the newest accepted (not duplicate) event, if any."""
        sql = "SELECT value FROM meta WHERE key = 'last_event_at'"
        row = await self._read(lambda c: c.execute(sql).fetchone())
        return None if row is None else float(row[0])

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the database;
        this store's own commits leave it unchanged."""
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        sql = "PRAGMA data_version"
        conn = self._res.wconn
        row = await self._loop.run_in_executor(
            self._res.writer, lambda: conn.execute(sql).fetchone()
        )
        return int(row[0])
