"""The Store: the spool's public face. Opening and closing the state database, the bounds a source
waits on, every write (queued to the group-commit writer) and every read (on a thread of its own,
so a sink worker asking for work never waits behind an fsync), and the background prune of the
dedup record.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import orjson
import structlog

from bridge.errors import SpoolFullError, StoreError, StoreUnavailableError
from bridge.events import Event
from bridge.plan import Plan
from bridge.store import database, pacing, queries, transactions
from bridge.store.bounds import DISK_CACHE_SECONDS, Room, StoreLimits
from bridge.store.clockwatch import ClockWatch
from bridge.store.marks import DeliveredMarks, open_delivered_marks
from bridge.store.recent import ReadQuery
from bridge.store.rows import (
    AcceptResult,
    DeadLetter,
    Delivery,
    HistoryEvent,
    Quarantined,
    ReplayOutcome,
    SinkCounts,
    dead_letter_from_row,
    delivery_from_row,
    history_from_row,
    quarantined_from_row,
)
from bridge.store.transactions import PRUNE_CHUNK, Clock, Tx
from bridge.store.writer import Sleep, Writer

CLOCK_HINT: Final = "no seen ids are pruned this round: check the clock (NTP)"
log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_Params = Sequence[object] | Mapping[str, object]
_DEFAULT_LIMITS: Final = StoreLimits()


@dataclasses.dataclass(frozen=True, slots=True)
class _Resources:
    writer: ThreadPoolExecutor  # the only thread using wconn: every write, in call order
    reader: ThreadPoolExecutor  # the only thread using rconn: reads, concurrent with writes (WAL)
    wconn: sqlite3.Connection
    rconn: sqlite3.Connection
    lock_fd: int | None


class Store:
    """The durable spool. Create with :meth:`open`, finish with :meth:`close`."""

    def __init__(
        self, path: Path, limits: StoreLimits, res: _Resources, writer: Writer, *, clock: Clock
    ) -> None:
        self.path = path
        self.limits = limits
        self._res = res
        self._writer = writer
        self._room = writer.room = Room(path, limits)  # the writer looks inside after commits
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._pruner: asyncio.Task[None] | None = None
        self._marks: DeliveredMarks | None = None  # the delivered log: the daemon's store only
        self._mark_listeners: list[Callable[[Sequence[int]], None]] = []
        self._closed = False
        self.own_addresses: list[str] = []
        """The account's own addresses learned from mail, as stored when the store opened."""
        self.debounce: Mapping[str, float] = {}
        """Seconds per debounced sink: the accept opens its windows (set from the config)."""

    @classmethod
    async def open(
        cls,
        path: Path,
        limits: StoreLimits = _DEFAULT_LIMITS,
        *,
        exclusive: bool = True,
        probe_interval: float = 0.5,
        prune_interval: float = 60.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> Store:
        """Open (creating or migrating) the state database at ``path``.

        Args:
            limits: spool bounds and the dedup window.
            exclusive: take ``<path>.lock``, run the background prune and write probe, move a
                corrupt database aside (the daemon); false for commands that inspect or edit
                state while the daemon runs.
            probe_interval: seconds between write probes after a write failed.
            prune_interval: seconds between prunes of seen ids older than the dedup window.
            clock: wall-clock time, for when ids are seen, deliveries die and the dedup window.
            sleep: waits between write probes and between prunes.

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
                writer, functools.partial(database.open_writer, path, exclusive=exclusive)
            )
            keep = limits.history if exclusive else None  # the daemon applies a lowered bound
            state = await loop.run_in_executor(writer, database.opening_state, opened[1], keep)
            own = await loop.run_in_executor(writer, pacing.read_own_addresses, opened[1])
            rconn = await loop.run_in_executor(reader, database.open_reader, path)
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
        probe = probe_interval if exclusive else None
        group = Writer(path, wconn, writer, state, probe_interval=probe, sleep=sleep)
        store = cls(path, limits, res, group, clock=clock)
        store.own_addresses = own
        if exclusive:
            await store._open_delivered_log()
            store._pruner = asyncio.create_task(store._prune_loop(prune_interval, sleep))
        log.info("store.opened", path=str(path), exclusive=exclusive, spool_bytes=state.spool)
        return store

    async def close(self) -> None:
        """Finish queued writes, stop background work, close the database, release the lock."""
        if self._closed:
            return
        self._closed = True
        self._writer.notify()
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.wait([self._pruner])
        await self._writer.stop()
        if self._marks is not None:
            await self._marks.close()
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
    def commits(self) -> int:
        """Committed write transactions (the group-commit metric)."""
        return self._writer.commits

    @property
    def cursor(self) -> str | None:
        """The WebSocket replay cursor: the last WebSocket event durably accepted or recognised
        as a duplicate, with no refused WebSocket event before it."""
        return self._writer.cursor

    @property
    def spool_bytes(self) -> int:
        return self._writer.spool

    @property
    def writable(self) -> bool:
        """False after a write failed, until a probe write succeeds."""
        return self._writer.failure is None

    @property
    def has_room(self) -> bool:
        return not self._room.full(self._writer.spool)

    def has_room_for(self, size: int) -> bool:
        """True when an event of ``size`` bytes fits under both bounds now."""
        return self._room.fits(self._writer.spool, size)

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
            # Free disk changes silently, another process (`dlq`) may purge rows: look again.
            await self._next_change(DISK_CACHE_SECONDS)
            with contextlib.suppress(StoreUnavailableError):
                await self._write(lambda tx: None)  # reloads spool_bytes if another process wrote

    async def _next_change(self, within: float | None) -> None:
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        await self._writer.next_change(within)

    # -- writes ------------------------------------------------------------------------------

    async def accept(self, event: Event, sinks: Sequence[str] | Plan) -> AcceptResult:
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
        self, routed: Sequence[tuple[Event, Sequence[str] | Plan]]
    ) -> asyncio.Future[list[AcceptResult | StoreError]]:
        """Record each event as :meth:`accept` does, all in one transaction; one result per event.

        Queued when called, not when awaited: batches handed over in order commit in order, which
        the WebSocket cursor relies on. A refusal (:class:`SpoolFullError`) is that event's result
        and leaves the rest standing; a failed write fails the future, nothing written.
        """
        batch: list[tuple[Event, Plan]] = []
        for event, plan in routed:
            if isinstance(plan, str):
                raise TypeError("sinks must be a sequence of sink names, not one str")
            if not isinstance(plan, Plan):
                plan = Plan(sinks=tuple(dict.fromkeys(plan)))
            batch.append((event, plan))
        ws = next((e.event_id for e, _ in batch if e.from_own_websocket), None)
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        return self._writer.submit_rows(self._accept_rows, batch, ws_event_id=ws)

    def _accept_rows(self, tx: Tx, batch: list[tuple[Event, Plan]]) -> list[Any]:
        """On the writer thread: every accept queued meanwhile, as one batch."""
        return list(
            transactions.accept_batch(
                tx,
                batch=batch,
                room=self._room,
                clock=self._clock,
                history=self.limits.history,
                debounce=self.debounce,
            )
        )

    async def clear_cursor(self) -> None:
        await self._write(transactions.clear_cursor)

    async def mark_delivered(self, delivery_id: int) -> None:
        await self.mark_delivered_many((delivery_id,))

    async def mark_delivered_many(self, delivery_ids: Sequence[int]) -> None:
        """Delete delivered rows (and events left without rows) in one transaction."""
        await self._mark_delivered(delivery_ids)
        self._marks_committed(delivery_ids)

    def on_marks_committed(self, listener: Callable[[Sequence[int]], None]) -> Callable[[], None]:
        """Call ``listener`` with the ids of each delivered mark as it commits, in the event loop
        step that learns of it (a read begun before it may still see the rows pending); returns
        the call that stops it."""
        self._mark_listeners.append(listener)
        return lambda: self._mark_listeners.remove(listener)

    def _marks_committed(self, delivery_ids: Sequence[int]) -> None:
        if self._marks is not None:
            self._marks.log.committed(delivery_ids)
        for listener in self._mark_listeners:
            listener(delivery_ids)

    async def _mark_delivered(self, delivery_ids: Sequence[int]) -> None:
        delivered = functools.partial(
            transactions.delivered,
            delivery_ids=tuple(delivery_ids),
            history=self.limits.history,
            clock=self._clock,
        )
        await self._write(delivered)

    def note_delivered(self, delivery_ids: Sequence[int]) -> bool:
        """Write delivered ids ahead of their mark (:mod:`~bridge.store.delivered_log`): True
        once a crash of the process can no longer deliver them again, so their worker need not
        wait for :meth:`mark_delivered_many`; False when they were not written (then it must)."""
        return self._marks is not None and self._marks.log.write(delivery_ids)

    def noted(self, delivery_id: int) -> bool:
        """Whether the row is delivered, its mark not yet committed: still pending in a read,
        it must not be delivered again."""
        return self._marks is not None and delivery_id in self._marks.log

    def mark_later(self, delivery_ids: Sequence[int]) -> None:
        """Mark rows delivered whose ids are in the delivered log and whose worker stopped before
        their mark committed: the store commits it once it can write."""
        if self._marks is not None:
            self._marks.mark_later(delivery_ids)

    async def _open_delivered_log(self) -> None:
        self._marks = await open_delivered_marks(
            self.path,
            read=self._read,
            write=self._write,
            mark=self._mark_delivered,
            committed=self._marks_committed,
            wait_writable=self.wait_writable,
            blocking=functools.partial(self._loop.run_in_executor, self._res.writer),
        )

    async def record_attempt(self, delivery_id: int, *, attempts: int, error: str) -> None:
        await self._execute(queries.RECORD_ATTEMPT_SQL, (attempts, error, delivery_id))

    async def dead_letter(self, delivery_id: int, *, error: str, attempts: int) -> None:
        await self._execute(queries.DEAD_LETTER_SQL, (attempts, error, self._clock(), delivery_id))

    async def dlq_retry(self, *, sink: str | None = None, event_id: str | None = None) -> int:
        """Move matching dead rows back to pending, attempts reset, last_error kept. They keep
        their seq, so a redriven event goes before later events of its thread. Returns the count.
        """
        retry = functools.partial(transactions.retry_dead, {"sink": sink, "event_id": event_id})
        return await self._write(retry)

    async def dlq_purge(self, *, sink: str | None = None, event_id: str | None = None) -> int:
        """Delete matching dead rows (never pending ones); returns the count."""
        params = {"sink": sink, "event_id": event_id}
        return await self._write(
            functools.partial(transactions.drop, queries.DEAD_ROWS_SQL, params)
        )

    async def replay(self, event_id: str, sink: str) -> ReplayOutcome:
        """Deliver a past event to ``sink`` again, under its own event_id, dedup bypassed: a new
        pending row, to the event still held or held again from the history.

        Raises:
            SpoolFullError: it does not fit the spool now; nothing was written.
        """
        replay = functools.partial(
            transactions.replay, event_id=event_id, sink=sink, room=self._room
        )
        return await self._write(replay)

    async def quarantine_purge(self, *, event_id: str | None = None) -> int:
        """Delete quarantined events (all, or those sent as ``event_id``); returns the count."""
        purge = functools.partial(transactions.purge_quarantine, event_id=event_id)
        return await self._write(purge)

    async def drop_sink(self, sink: str) -> int:
        """Delete every row, pending or dead, of ``sink`` (one gone from the config)."""
        params = {"sink": sink}
        return await self._write(
            functools.partial(transactions.drop, queries.SINK_ROWS_SQL, params)
        )

    async def prune_seen(self) -> int:
        """Forget seen ids older than the dedup window, in small transactions; returns the count.

        Ids of events still held are kept: the event is the dedup record until it goes.
        """
        prune = functools.partial(
            transactions.prune_seen, window=self.limits.dedup_window, clock=self._clock
        )
        total = 0
        while (n := await self._write(prune)) == PRUNE_CHUNK:
            total += n
        total += n
        if total:
            log.info("store.seen_pruned", path=str(self.path), count=total)
        return total

    def _execute(self, statement: str, params: _Params) -> asyncio.Future[int]:
        """Queue one statement for the next batch; its future gives the rows it changed."""
        return self._write(lambda tx: tx.conn.execute(statement, params).rowcount)

    def _write(
        self, fn: Callable[[Tx], _T], *, ws_event_id: str | None = None
    ) -> asyncio.Future[_T]:
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        return self._writer.submit(fn, ws_event_id=ws_event_id)

    async def _prune_loop(self, interval: float, sleep: Sleep) -> None:
        watch = ClockWatch(self._clock)
        while True:
            await sleep(interval)
            if (step := watch.stepped()) is not None:  # pruning by a wrong clock forgets all
                log.warning("store.clock_stepped", seconds=round(step), hint=CLOCK_HINT)
            elif self.writable:
                try:
                    await self.prune_seen()
                except StoreError as exc:  # the write probe reports the disk; retry next round
                    log.warning("store.prune_failed", path=str(self.path), reason=str(exc))

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
        rows = await self._read(queries.PENDING_SQL, (sink, after_seq, limit))
        return [delivery_from_row(row) for row in rows]

    async def dlq_list(
        self, *, sink: str | None = None, event_id: str | None = None
    ) -> list[DeadLetter]:
        """Dead rows matching the filters, in seq (acceptance) order, payloads included."""
        rows = await self._read(queries.DLQ_LIST_SQL, {"sink": sink, "event_id": event_id})
        return [dead_letter_from_row(row) for row in rows]

    async def quarantine_list(self, *, event_id: str | None = None) -> list[Quarantined]:
        """Quarantined events (all, or those sent as ``event_id``), oldest first."""
        rows = await self._read(queries.QUARANTINE_LIST_SQL, {"event_id": event_id})
        return [quarantined_from_row(row) for row in rows]

    async def history(self, *, sink: str | None = None, limit: int = 100) -> list[HistoryEvent]:
        """Delivered events (to ``sink``, or any), newest first, payloads left out."""
        rows = await self._read(queries.HISTORY_LIST_SQL, {"sink": sink, "limit": limit})
        return [history_from_row(row) for row in rows]

    async def history_event(self, event_id: str) -> HistoryEvent | None:
        """The newest delivery of ``event_id`` in the history, payload included."""
        rows = await self._read(queries.HISTORY_EVENT_SQL, (event_id,))
        return history_from_row(rows[0]) if rows else None

    async def history_sinks(self) -> set[str]:
        """Every sink named in the history."""
        return {sink for (sink,) in await self._read(queries.HISTORY_SINKS_SQL)}

    async def sink_counts(self) -> dict[str, SinkCounts]:
        """Pending and dead rows per sink, for every sink holding rows, configured or not."""
        rows = await self._read(queries.SINK_COUNTS_SQL)
        return {sink: SinkCounts(pending=p, dead=d) for sink, p, d in rows}

    async def oldest_pending(self, sinks: Sequence[str]) -> dict[str, float]:
        """``received_at`` of the oldest pending row of each of ``sinks`` that has one."""
        rows = await self._read(queries.OLDEST_PENDING_SQL, (orjson.dumps(list(sinks)).decode(),))
        return {sink: float(at) for sink, at in rows if at is not None}

    async def last_event_at(self) -> float | None:
        """``received_at`` of the newest accepted (not duplicate) event, if any."""
        rows = await self._read(queries.LAST_EVENT_SQL)
        return float(rows[0][0]) if rows else None

    async def data_version(self) -> int:
        """Changes whenever another connection (another process) commits to the database;
        this store's own commits leave it unchanged."""
        if self._closed:
            raise StoreError(f"state database {self.path} is closed")
        row = await self._writer.call(lambda conn: conn.execute("PRAGMA data_version").fetchone())
        return int(row[0])

    async def read_query(self, statement: ReadQuery, params: Mapping[str, object]) -> list[Any]:
        """Rows of one of :mod:`bridge.store.recent`'s read-only queries (the console's)."""
        return await self._read(statement, params)

    async def deliveries(self, ids: Sequence[int]) -> list[Delivery]:
        """The rows among ``ids`` still pending, ascending seq, payloads included: ids gone
        (delivered, purged, their sink dropped) or dead are left out."""
        rows = await self._read(queries.PENDING_BY_ID_SQL, (orjson.dumps(list(ids)).decode(),))
        return [delivery_from_row(row) for row in rows]
