"""Group commit: one thread owns the write connection and commits every write queued meanwhile in
one transaction, in the order they were queued (one fsync for many events).

The writer thread takes the next batch itself as soon as a commit returns: it does not wait for
the event loop to hand it over: under load the event loop is busy with the last batch's results,
and a hand-off through it would leave the thread idle between commits. The event loop only hears
the outcome of each commit, in commit order.

The thread keeps what the store holds in memory between transactions (spool bytes, the WebSocket
cursor and the refused event it must not pass, the database's data_version) and updates it as
each transaction commits; the event loop's copy follows in commit order. The cursor is written in
the same transaction as the events it points past. After a write fails the thread refuses writes
until a probe write succeeds.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from bridge.errors import SpoolFullError, StoreError, StoreUnavailableError
from bridge.store import database, queries
from bridge.store.bounds import Room
from bridge.store.transactions import Tx, hold_cursor

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_MAX_BATCH: Final = 1000

Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep``, or a stand-in a test steps by hand."""


Rows = Callable[[Tx, list[Any]], list[Any]]
"""Writes rows in a transaction and returns one result per row, in order: see submit_rows."""

Call = Callable[[sqlite3.Connection], Any]
"""Runs on the write connection outside any transaction: see Writer.call."""


@dataclasses.dataclass(slots=True)
class _Op:
    fn: Callable[[Tx], object] | None  # None: a share of a rows write, or a call
    future: asyncio.Future[Any]
    ws_event_id: str | None  # a WebSocket accept: its refusal must hold the cursor back
    write_rows: Rows | None = None
    rows: list[Any] = dataclasses.field(default_factory=list)
    call: Call | None = None  # run alone, outside a transaction
    probe: bool = False  # a call whose success makes the database writable again


@dataclasses.dataclass(slots=True)
class _Outcome:
    """What one batch came to, handed from the writer thread to the event loop."""

    results: list[object] | None = None  # one per op; None: the batch failed as a whole
    tx: Tx | None = None  # the committed transaction (None for a call, or a failure)
    error: Exception | None = None  # every op's exception when the batch failed as a whole
    failure: str | None = None  # why writes fail now: set when this batch found it out
    writable_again: bool = False  # this batch (or probe) found the database writable again


class Writer:
    """Runs transactions on the write connection, in call order, many to a commit.

    ``commits`` counts committed write transactions (the group-commit metric).

    Args:
        conn: the write connection; used only on ``thread``.
        thread: a one-thread executor, the only one using ``conn``.
        state: what the database holds now (:func:`bridge.store.queries.read_state`).
        probe_interval: seconds between probe writes after a write failed; None: no probe, the
            next write that succeeds says the database is writable again.
        sleep: waits between probes.
    """

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        thread: ThreadPoolExecutor,
        state: queries.State,
        *,
        probe_interval: float | None,
        sleep: Sleep,
    ) -> None:
        self.path = path
        self.commits = 0
        # The event loop's copy, updated in commit order; the thread's own is _state.
        self.spool, self.cursor = state.spool, state.cursor
        self.failure: str | None = None  # why writes fail; None while writable
        self.room: Room | None = None
        """The store's room check, told after each commit what the database can reuse."""
        self._conn = conn
        self._thread = thread
        self._probe_interval = probe_interval
        self._sleep = sleep
        self._loop = asyncio.get_running_loop()
        self._probe: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # set and replaced on every change a waiter may want
        self._stopped = False
        # Shared with the thread, under _lock: the queue, and whether a drain is running.
        self._lock = threading.Lock()
        self._queue: collections.deque[_Op] = collections.deque()
        self._draining = False
        # The thread's alone.
        self._state = state
        self._ws_gap: str | None = None  # first refused WebSocket event id, see advance_cursor
        self._refusing: str | None = None  # set after a failed write until a probe succeeds

    def submit(
        self, fn: Callable[[Tx], _T], *, ws_event_id: str | None = None
    ) -> asyncio.Future[_T]:
        """Queue ``fn`` for the next batch; its future gives what it returned once committed
        (on disk: every commit waits for it, ``synchronous=FULL``)."""
        # Synchronous on purpose: the queue position is taken when the caller runs, not later.
        future: asyncio.Future[_T] = self._loop.create_future()
        self._enqueue(_Op(fn, future, ws_event_id))
        return future

    def submit_rows(
        self, write_rows: Rows, rows: list[Any], *, ws_event_id: str | None = None
    ) -> asyncio.Future[list[Any]]:
        """Queue ``rows`` for the next batch; the future gives their results once committed.

        Rows queued one after another for the same ``write_rows`` are written by one call of it
        in their transaction: concurrent accepts (webhook requests, WebSocket batches read while
        a commit runs) cost the SQL statements of one batch, not one set each.
        """
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._enqueue(_Op(None, future, ws_event_id, write_rows, rows))
        return future

    def call(self, fn: Call) -> asyncio.Future[Any]:
        """Queue ``fn(conn)``, run on the write connection after every write queued before it,
        outside any transaction; its future gives what it returned."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._enqueue(_Op(None, future, None, call=fn))
        return future

    async def stop(self) -> None:
        """Commit what is queued, stop probing; writes queued later fail at once."""
        if self._probe is not None:
            self._probe.cancel()
        if not self._stopped:
            barrier = self.call(lambda conn: None)
            self._stopped = True
            # wait, not await: stop still finishes if a forced shutdown cancelled the caller.
            await asyncio.wait([barrier])
        if self._probe is not None:
            await asyncio.wait([self._probe])

    def notify(self) -> None:
        """Wake every :meth:`next_change` waiter."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def next_change(self, within: float | None) -> None:
        """Wait for the next :meth:`notify`, or ``within`` seconds."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await changed.wait()

    def _enqueue(self, op: _Op) -> None:
        if self._stopped:
            op.future.set_exception(StoreError(f"state database {self.path} was closed"))
            return
        with self._lock:
            self._queue.append(op)
            if self._draining:
                return  # the running drain takes it
            self._draining = True
        # Nothing awaits the drain: it hands every outcome, failures included, to _finish.
        _ = self._loop.run_in_executor(self._thread, self._drain)

    # -- on the event loop, in commit order ------------------------------------------------------

    def _finish(self, batch: list[_Op], outcome: _Outcome) -> None:
        if outcome.failure is not None:
            if self.failure is None:
                log.error("store.write_failed", path=str(self.path), reason=outcome.failure)
            self.failure = outcome.failure
            # _probe is None once a probe's success was handled, even before its task wakes.
            if self._probe_interval is not None and self._probe is None and not self._stopped:
                self._probe = asyncio.create_task(
                    self._probe_loop(self._probe_interval), name="store-probe"
                )
            self.notify()
        freed = False
        if (tx := outcome.tx) is not None:
            freed = tx.spool < self.spool
            self.spool, self.cursor = tx.spool, tx.cursor
            self.commits += 1
        for i, op in enumerate(batch):
            if op.future.done():
                continue  # the caller was cancelled; the write stands all the same
            if outcome.results is None:
                assert outcome.error is not None
                op.future.set_exception(outcome.error)
            elif isinstance(result := outcome.results[i], StoreError):
                op.future.set_exception(result)
            else:
                op.future.set_result(result)
        if outcome.writable_again and batch[0].probe:
            self._probe = None  # done: a failure handled next starts a probe of its own
        if outcome.writable_again and self.failure is not None:
            self.failure = None
            log.info("store.writable_again", path=str(self.path))
            self.notify()
        elif freed:
            self.notify()

    async def _probe_loop(self, interval: float) -> None:
        try:
            while True:
                await self._sleep(interval)
                future = self._probe_call()
                with contextlib.suppress(sqlite3.Error, StoreError):
                    await future
                    break
        finally:
            if self._probe is asyncio.current_task():
                self._probe = None

    def _probe_call(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        self._enqueue(_Op(None, future, None, call=database.probe, probe=True))
        return future

    # -- on the writer thread --------------------------------------------------------------------

    def _drain(self) -> None:
        """Run batches until the queue is empty: whatever queued while a batch was being
        committed is the next batch."""
        while True:
            with self._lock:
                if not self._queue:
                    self._draining = False
                    return
                batch = [self._queue.popleft()]
                if batch[0].call is None:
                    while self._queue and len(batch) < _MAX_BATCH and self._queue[0].call is None:
                        batch.append(self._queue.popleft())
            try:
                outcome = self._run_call(batch[0]) if batch[0].call else self._run_batch(batch)
            except Exception as exc:  # a bug: fail this batch, and keep draining
                log.exception("store.batch_failed", path=str(self.path), batch=len(batch))
                outcome = _Outcome(error=StoreError(f"internal store error: {exc!r}"))
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self._loop.call_soon_threadsafe(self._finish, batch, outcome)

    def _run_call(self, op: _Op) -> _Outcome:
        assert op.call is not None
        try:
            result: object = op.call(self._conn)
        except Exception as exc:  # handed to the caller, as a write's would be
            return _Outcome(error=exc)
        if op.probe:
            self._refusing = None
            return _Outcome(results=[result], writable_again=True)
        return _Outcome(results=[result])

    def _run_batch(self, batch: list[_Op]) -> _Outcome:
        if self._refusing is not None:  # the probe decides when writing is worth trying again
            return self._refused(
                batch, f"state database {self.path} is not writable: {self._refusing}"
            )
        try:
            results, tx = self._commit_batch(batch)
        except sqlite3.Error as exc:
            # Errors of the sqlite3 module itself (a misused API) have no SQLite error name.
            name = getattr(exc, "sqlite_errorname", type(exc).__name__)
            reason = f"cannot write state database {self.path}: {exc} ({name})"
            if self._probe_interval is not None:
                self._refusing = reason
            outcome = self._refused(batch, reason)
            outcome.failure = reason
            return outcome
        except Exception as exc:  # a bug, not the disk: fail this batch, keep the writer alive
            log.exception("store.batch_failed", path=str(self.path), batch=len(batch))
            return _Outcome(error=StoreError(f"internal store error: {exc!r}"))
        self._state = queries.State(tx.spool, tx.cursor, tx.data_version, tx.history_rows)
        self._ws_gap = tx.ws_gap
        if self.room is not None:
            with contextlib.suppress(sqlite3.Error):  # a count for the room check, not a write
                self.room.committed(self._conn)
        return _Outcome(results=results, tx=tx, writable_again=True)

    def _refused(self, batch: list[_Op], reason: str) -> _Outcome:
        # Nothing of the batch was stored: as for one refused event (hold_cursor), the cursor
        # must not pass its first WebSocket event.
        if self._ws_gap is None:
            self._ws_gap = next((op.ws_event_id for op in batch if op.ws_event_id), None)
        return _Outcome(error=StoreUnavailableError(f"{reason}; nothing was stored"))

    def _commit_batch(self, batch: list[_Op]) -> tuple[list[object], Tx]:
        conn = self._conn
        database.begin(conn)
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            # Another process committed: reload what we keep.
            state = self._state if version == self._state.data_version else queries.read_state(conn)
            tx = Tx(conn, state, self._ws_gap)
            cursor_before = tx.cursor
            results: list[object] = []
            start = 0
            while start < len(batch):
                end = _shares_end(batch, start)
                try:
                    results.extend(_run_ops(tx, batch[start:end]))
                except SpoolFullError as exc:  # these wrote nothing; the rest of the batch stands
                    hold_cursor(tx, batch[start].ws_event_id)
                    results.extend([exc] * (end - start))
                start = end
            # The cursor commits with the events it points past: saved apart, a crash in between
            # could leave it past an event that was never stored, and the replay would skip it.
            metas: dict[str, str | float | None] = {}
            if tx.cursor != cursor_before:
                metas["cursor"] = tx.cursor
            if tx.last_event_at is not None:
                metas["last_event_at"] = tx.last_event_at
            if metas:
                queries.set_metas(conn, metas)
            conn.execute("COMMIT")
        except BaseException:
            if self.room is not None:
                self.room.rolled_back()  # nothing of it was written: neither are its charges
            raise
        finally:
            database.rollback(conn)
        return results, tx


def _shares_end(batch: list[_Op], start: int) -> int:
    """Where the run of ops written by one call, starting at ``start``, ends: one op, or the
    adjacent shares of rows for the same function."""
    write_rows = batch[start].write_rows
    end = start + 1
    if write_rows is None:
        return end
    while end < len(batch) and batch[end].write_rows == write_rows:
        end += 1
    return end


def _run_ops(tx: Tx, ops: list[_Op]) -> list[object]:
    """Run one op, or one call for the rows of several; a result per op."""
    first = ops[0]
    if first.write_rows is None:
        assert first.fn is not None
        return [first.fn(tx)]
    results = first.write_rows(tx, [row for op in ops for row in op.rows])
    if len(results) != sum(len(op.rows) for op in ops):
        raise RuntimeError("a rows write returned a result count unlike its row count")
    shares: list[object] = []
    at = 0
    for op in ops:
        shares.append(results[at : at + len(op.rows)])
        at += len(op.rows)
    return shares
