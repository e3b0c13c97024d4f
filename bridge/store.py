"""The durable spool: accepted events, dedup ids, per-sink delivery rows, dead letters,
quarantined conflicts and the WebSocket replay cursor, in one SQLite database (WAL) that is the
bridge's only state.

One writer thread owns the write connection and commits every write of a batch in one
transaction (group commit: one fsync for many events). Reads use a second connection on a
second thread, so a sink worker asking for work never waits behind an fsync. The SQL itself
lives in :mod:`bridge.store_schema`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import math
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from bridge import store_schema as sql
from bridge.errors import SpoolFullError, StoreError, StoreUnavailableError
from bridge.events import Event, Origin

# Longer than the house ~400 lines on purpose: the group-commit writer, its failure handling and
# the cursor rules only make sense read together. The SQL is in store_schema.

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_Params = Sequence[object] | Mapping[str, object]
_MAX_BATCH: Final = 1000
_PRUNE_CHUNK: Final = 1000
_DISK_CACHE_SECONDS: Final = 1.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StoreLimits:
    max_bytes: int = 1 << 30  # spool bound: payload bytes of events still held
    min_free: int = 256 << 20  # free-disk floor of the filesystem holding the database
    dedup_window: float = 7 * 86400  # seconds a seen event_id is remembered


_DEFAULT_LIMITS: Final = StoreLimits()


class AcceptOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    # A known id with other content or another inbox: answered like a duplicate, never
    # delivered, quarantined.
    CONFLICT = "conflict"


class ConflictReason(enum.StrEnum):
    """Why an event is a conflict rather than a duplicate."""

    CONTENT = "content_mismatch"  # its dedup key was seen with other content
    INBOX = "inbox_mismatch"  # its dedup key was seen for another inbox
    ID_REUSED = "event_id_reused"  # its key is new, but the id it is sent under is taken


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
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


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AcceptResult:
    outcome: AcceptOutcome
    seq: int | None  # seq and deliveries only when ACCEPTED
    deliveries: tuple[Delivery, ...]
    conflict: ConflictReason | None = None  # only when CONFLICT
    quarantined: bool = False  # a CONFLICT is in the quarantine (false past its row cap)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Quarantined:
    """A conflicting event kept for inspection; ``payload`` is None when it did not fit."""

    id: int
    event_id: str
    dedup_key: str
    reason: str
    origin: Origin
    type: str
    inbox_id: str | None
    received_at: float
    content_id: str | None
    quarantined_at: float
    payload: bytes | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    delivery: Delivery
    error: str
    dead_at: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SinkCounts:
    pending: int
    dead: int


_DUPLICATE: Final = AcceptResult(outcome=AcceptOutcome.DUPLICATE, seq=None, deliveries=())


_DELIVERY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Delivery))
_QUARANTINED_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Quarantined))


def _conflict(known: tuple[int, str | None, str | None], event: Event) -> ConflictReason | None:
    """Why ``event`` conflicts with what the store knows of its key or id; None: a duplicate."""
    kind, content_id, inbox_id = known
    if kind == sql.ID_TAKEN:
        return ConflictReason.ID_REUSED
    if content_id is None or event.content_id is None:
        return None  # unknown content (a row from before migration 2) never conflicts
    if inbox_id != event.inbox_id:
        return ConflictReason.INBOX
    if content_id != event.content_id:
        return ConflictReason.CONTENT
    return None


def _delivery(row: Sequence[Any]) -> Delivery:
    """A Delivery from a row laid out as ``store_schema.PENDING_SQL`` selects it."""
    fields = dict(zip(_DELIVERY_FIELDS, row, strict=False))  # row[12], dead_at, is not a field
    return Delivery(**fields | {"origin": Origin(fields["origin"])})


class _Tx:
    """What one write transaction changes in the store's memory; applied only once it commits."""

    __slots__ = ("conn", "cursor", "data_version", "last_event_at", "spool", "ws_gap")

    def __init__(self, conn: sqlite3.Connection, state: tuple[int, str | None, int]) -> None:
        self.conn = conn
        self.spool, self.cursor, self.data_version = state
        self.ws_gap: str | None = None
        self.last_event_at: float | None = None


@dataclasses.dataclass(slots=True)
class _Op:
    fn: Callable[[_Tx], object]
    future: asyncio.Future[Any]
    ws_event_id: str | None  # a WebSocket accept: its refusal must hold the cursor back


@dataclasses.dataclass(frozen=True, slots=True)
class _Resources:
    writer: ThreadPoolExecutor  # the only thread using wconn: every write, in call order
    reader: ThreadPoolExecutor  # the only thread using rconn: reads, concurrent with writes (WAL)
    wconn: sqlite3.Connection
    rconn: sqlite3.Connection
    lock_fd: int | None


class Store:
    """The durable spool. Create with :meth:`open`, finish with :meth:`close`.

    ``commits`` counts committed write transactions (the group-commit metric).
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
        self._changed = asyncio.Event()  # set and replaced on every change a waiter may want
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
            exclusive: take ``<path>.lock``, run the background prune and write probe, move a
                corrupt database aside (the daemon); false for commands that inspect or edit
                state while the daemon runs.
            probe_interval: seconds between write probes after a write failed.
            prune_interval: seconds between prunes of seen ids older than the dedup window.

        Raises:
            StoreLockedError: another process holds the state.
            StoreVersionError: the database is newer than this code.
            StoreError: the database cannot be opened; nothing was moved or reset.
        """
        path = Path(path)
        loop = asyncio.get_running_loop()
        writer = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        reader = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        opened = None
        try:
            opened = await loop.run_in_executor(
                writer, functools.partial(sql.open_writer, path, exclusive=exclusive)
            )
            state = await loop.run_in_executor(writer, sql.read_state, opened[1])
            rconn = await loop.run_in_executor(reader, sql.open_reader, path)
        except BaseException as exc:
            if opened is not None:
                await loop.run_in_executor(writer, opened[1].close)
                if opened[0] is not None:
                    os.close(opened[0])
            writer.shutdown()
            reader.shutdown()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot open state database {path}: {exc}") from exc
            raise
        lock_fd, wconn = opened
        res = _Resources(writer, reader, wconn, rconn, lock_fd)
        store = cls(path, limits, res, state, exclusive=exclusive, probe_interval=probe_interval)
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
        tasks = [t for t in (self._writer_task, self._pruner, self._probe) if t is not None]
        for task in tasks[1:]:
            task.cancel()
        self._queue.put_nowait(None)
        # wait, not await: close still finishes if a forced shutdown cancelled the writer task.
        await asyncio.wait(tasks)
        res = self._res
        await self._loop.run_in_executor(res.writer, res.wconn.close)
        await self._loop.run_in_executor(res.reader, res.rconn.close)
        res.writer.shutdown()
        res.reader.shutdown()
        if res.lock_fd is not None:
            os.close(res.lock_fd)  # releases the flock
        log.info("store.closed", path=str(self.path))

    # -- state kept in memory ----------------------------------------------------------------

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
        return self.has_room_for(0)

    def has_room_for(self, size: int) -> bool:
        """True when an event of ``size`` bytes fits under both bounds now."""
        limits = self.limits
        return (
            self._spool_bytes + size <= limits.max_bytes
            and self._spool_bytes < limits.max_bytes
            and self._free_disk() >= limits.min_free
        )

    async def wait_writable(self) -> None:
        while not self.writable:
            await self._next_change(None)

    async def wait_room(self, size: int = 0) -> None:
        """Wait until ``has_room``, and until an event of ``size`` bytes fits under max_bytes.

        Raises:
            SpoolFullError: ``size`` exceeds max_bytes, so it never fits.
        """
        if size > self.limits.max_bytes:
            raise SpoolFullError(
                f"a {size}-byte event never fits max_bytes={self.limits.max_bytes}"
            )
        while not self.has_room_for(size):
            # Free disk changes without telling us, and another process (the `dlq` command)
            # may purge rows: look again every second.
            await self._next_change(_DISK_CACHE_SECONDS)
            with contextlib.suppress(StoreUnavailableError):
                await self._write(lambda tx: None)  # reloads spool_bytes if another process wrote

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _next_change(self, within: float | None) -> None:
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
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

        A known dedup key is a DUPLICATE; with other content or another inbox than it was seen
        with, or a new key whose ``event_id`` is taken, a CONFLICT, quarantined and never delivered.

        Returns once the transaction is durably committed. The write is queued before this
        coroutine first suspends, so accepts started in order commit in order.

        Raises:
            SpoolFullError: over ``max_bytes`` or under ``min_free``; nothing was written.
            StoreUnavailableError: the write failed; nothing was written.
        """
        (result,) = await self.accept_batch([(event, sinks)])
        if isinstance(result, StoreError):
            raise result
        return result

    def accept_batch(
        self, routed: Sequence[tuple[Event, Sequence[str]]]
    ) -> asyncio.Future[list[AcceptResult | StoreError]]:
        """Record each event as :meth:`accept` does, all in one transaction; one result per event.

        Queued when called, not when awaited: batches handed over in order commit in order, which
        the WebSocket cursor relies on. A refusal (:class:`SpoolFullError`) is that event's result
        and leaves the rest standing; a failed write fails the future, nothing written.
        """
        batch: list[tuple[Event, tuple[str, ...]]] = []
        for event, sinks in routed:
            if isinstance(sinks, str):
                raise TypeError("sinks must be a sequence of sink names, not one str")
            batch.append((event, tuple(dict.fromkeys(sinks))))
        ws = next((e.event_id for e, _ in batch if e.origin is Origin.WEBSOCKET), None)
        return self._write(functools.partial(self._tx_accept_batch, batch=batch), ws_event_id=ws)

    async def clear_cursor(self) -> None:
        await self._write(self._tx_clear_cursor)

    async def mark_delivered(self, delivery_id: int) -> None:
        await self._write(functools.partial(self._tx_delivered, delivery_id=delivery_id))

    async def record_attempt(self, delivery_id: int, *, attempts: int, error: str) -> None:
        await self._execute(sql.RECORD_ATTEMPT_SQL, (attempts, error, delivery_id))

    async def dead_letter(self, delivery_id: int, *, error: str, attempts: int) -> None:
        await self._execute(sql.DEAD_LETTER_SQL, (attempts, error, time.time(), delivery_id))

    async def dlq_retry(self, *, sink: str | None = None, event_id: str | None = None) -> int:
        """Move matching dead rows back to pending, attempts reset, last_error kept. They keep
        their seq, so a redriven event goes before later events of its thread. Returns the count.
        """
        return await self._execute(sql.DLQ_RETRY_SQL, {"sink": sink, "event_id": event_id})

    async def dlq_purge(self, *, sink: str | None = None, event_id: str | None = None) -> int:
        """Delete matching dead rows (never pending ones); returns the count."""
        params = {"sink": sink, "event_id": event_id}
        return await self._write(functools.partial(self._tx_drop, sql.DLQ_PURGE_SQL, params))

    async def quarantine_purge(self, *, event_id: str | None = None) -> int:
        """Delete quarantined events (all, or those sent as ``event_id``); returns the count."""
        return await self._write(functools.partial(self._tx_purge_quarantine, event_id=event_id))

    async def drop_sink(self, sink: str) -> int:
        """Delete every row, pending or dead, of ``sink`` (one gone from the config)."""
        params = {"sink": sink}
        return await self._write(functools.partial(self._tx_drop, sql.DROP_SINK_SQL, params))

    async def prune_seen(self) -> int:
        """Forget seen ids older than the dedup window, in small transactions; returns the count.

        Ids of events still held are kept: the event is the dedup record until it goes.
        """
        total = 0
        while (n := await self._write(self._tx_prune)) == _PRUNE_CHUNK:
            total += n
        total += n
        if total:
            log.info("store.seen_pruned", path=str(self.path), count=total)
        return total

    def _execute(self, statement: str, params: _Params) -> asyncio.Future[int]:
        """Queue one statement for the next batch; its future gives the rows it changed."""
        return self._write(lambda tx: tx.conn.execute(statement, params).rowcount)

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
            # Whatever queued while the previous batch was being committed is the next batch.
            while (op := await self._queue.get()) is not None:
                batch = [op]
                while len(batch) < _MAX_BATCH and not self._queue.empty():
                    if (op := self._queue.get_nowait()) is None:
                        self._queue.put_nowait(None)
                        break
                    batch.append(op)
                await self._run_batch(batch)
        finally:
            while not self._queue.empty():
                if (op := self._queue.get_nowait()) is not None:
                    batch.append(op)
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(StoreError(f"state database {self.path} was closed"))

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
                log.error("store.write_failed", path=str(self.path), reason=str(exc))
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
                    await self._loop.run_in_executor(self._res.writer, sql.probe, self._res.wconn)
                    break
        finally:
            self._probe = None
        self._writable_again()

    async def _prune_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self.writable:
                try:
                    await self.prune_seen()
                except StoreError as exc:  # the write probe reports the disk; retry next round
                    log.warning("store.prune_failed", path=str(self.path), reason=str(exc))

    # -- transactions: run on the writer thread, inside _commit_batch --------------------------

    def _commit_batch(self, batch: list[_Op]) -> tuple[list[object], _Tx]:
        conn = self._res.wconn
        sql.begin(conn)
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version != self._data_version:  # another process committed: reload what we cache
                tx = _Tx(conn, sql.read_state(conn))
            else:
                tx = _Tx(conn, (self._spool_bytes, self._cursor, version))
            tx.ws_gap = self._ws_gap
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
            # could leave it past an event that was never stored, and the replay would skip it.
            if tx.cursor != cursor_before:
                sql.set_meta(conn, "cursor", tx.cursor)
            if tx.last_event_at is not None:
                sql.set_meta(conn, "last_event_at", tx.last_event_at)
            conn.execute("COMMIT")
        finally:
            sql.rollback(conn)
        return results, tx

    def _tx_accept_batch(
        self, tx: _Tx, *, batch: list[tuple[Event, tuple[str, ...]]]
    ) -> list[AcceptResult | StoreError]:
        results: list[AcceptResult | StoreError] = []
        for event, sinks in batch:
            try:
                results.append(self._tx_accept(tx, event=event, sinks=sinks))
            except SpoolFullError as exc:  # this event wrote nothing; the rest stand
                if event.origin is Origin.WEBSOCKET and tx.ws_gap is None:
                    tx.ws_gap = event.event_id
                results.append(exc)
        return results

    def _tx_accept(self, tx: _Tx, *, event: Event, sinks: tuple[str, ...]) -> AcceptResult:
        known = sql.known_identity(tx.conn, event)
        if known is not None:
            # Handled either way: a conflict moves the cursor like a duplicate.
            self._tx_cursor(tx, event)
            reason = _conflict(known, event)
            return _DUPLICATE if reason is None else self._tx_quarantine(tx, event, reason)
        size = len(event.raw) if sinks else 0
        self._check_room(tx.spool, size)
        seq, ids = sql.insert_event(tx.conn, event, sinks, seen_at=time.time())
        tx.spool += size
        tx.last_event_at = event.received_at
        self._tx_cursor(tx, event)
        fields = (event.event_id, event.type, event.inbox_id, event.thread_id, event.origin)
        deliveries = tuple(
            _delivery((row_id, seq, sink, *fields, event.received_at, event.raw, 0, None))
            for row_id, sink in zip(ids, sinks, strict=True)
        )
        return AcceptResult(outcome=AcceptOutcome.ACCEPTED, seq=seq, deliveries=deliveries)

    def _tx_quarantine(self, tx: _Tx, event: Event, reason: ConflictReason) -> AcceptResult:
        # A conflict is answered like a duplicate whatever room is left: past the spool bound it
        # is kept without its payload rather than refused (a 503 would only bring it back).
        try:
            self._check_room(tx.spool, len(event.raw))
            keep = True
        except SpoolFullError:
            keep = False
        stored, size = sql.quarantine_event(
            tx.conn, event, reason.value, keep_payload=keep, at=time.time()
        )
        tx.spool += size
        return AcceptResult(
            outcome=AcceptOutcome.CONFLICT,
            seq=None,
            deliveries=(),
            conflict=reason,
            quarantined=stored,
        )

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
        tx.spool -= sql.delete_delivery(tx.conn, delivery_id)

    @staticmethod
    def _tx_drop(statement: str, params: Mapping[str, str | None], tx: _Tx) -> int:
        count, tx.spool = sql.delete_deliveries(tx.conn, statement, params)
        return count

    @staticmethod
    def _tx_purge_quarantine(tx: _Tx, *, event_id: str | None) -> int:
        count, tx.spool = sql.purge_quarantine(tx.conn, event_id)
        return count

    def _tx_prune(self, tx: _Tx) -> int:
        before = time.time() - self.limits.dedup_window
        return sql.prune_seen(tx.conn, before=before, limit=_PRUNE_CHUNK)

    # -- reads: on the reader thread, committed state only -----------------------------------

    async def _read(self, statement: str, params: _Params = ()) -> list[Any]:
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        conn = self._res.rconn
        try:
            return await self._loop.run_in_executor(
                self._res.reader, lambda: conn.execute(statement, params).fetchall()
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read state database {self.path}: {exc}") from exc

    async def pending(self, sink: str, *, after_seq: int = 0, limit: int = 1000) -> list[Delivery]:
        """Pending (never dead) rows of ``sink`` with seq > ``after_seq``, ascending seq."""
        rows = await self._read(sql.PENDING_SQL, (sink, after_seq, limit))
        return [_delivery(row) for row in rows]

    async def dlq_list(
        self, *, sink: str | None = None, event_id: str | None = None
    ) -> list[DeadLetter]:
        """Dead rows matching the filters, in seq (acceptance) order, payloads included."""
        rows = await self._read(sql.DLQ_LIST_SQL, {"sink": sink, "event_id": event_id})
        return [
            DeadLetter(delivery=_delivery(row), error=row[11] or "", dead_at=row[12])
            for row in rows
        ]

    async def quarantine_list(self, *, event_id: str | None = None) -> list[Quarantined]:
        """Quarantined events (all, or those sent as ``event_id``), oldest first."""
        rows = await self._read(sql.QUARANTINE_LIST_SQL, {"event_id": event_id})
        return [
            Quarantined(
                **dict(zip(_QUARANTINED_FIELDS, row, strict=True)) | {"origin": Origin(row[4])}
            )
            for row in rows
        ]

    async def sink_counts(self) -> dict[str, SinkCounts]:
        """Pending and dead rows per sink, for every sink holding rows, configured or not."""
        rows = await self._read(sql.SINK_COUNTS_SQL)
        return {sink: SinkCounts(pending=p, dead=d) for sink, p, d in rows}

    async def last_event_at(self) -> float | None:
        """``received_at`` of the newest accepted (not duplicate) event, if any."""
        rows = await self._read(sql.LAST_EVENT_SQL)
        return float(rows[0][0]) if rows else None

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the database;
        this store's own commits leave it unchanged."""
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        conn = self._res.wconn
        row = await self._loop.run_in_executor(
            self._res.writer, lambda: conn.execute("PRAGMA data_version").fetchone()
        )
        return int(row[0])
