"""Group commit: one thread owns the write connection and commits every write queued meanwhile in
one transaction, in the order they were queued (one fsync for many events).

The writer keeps what the store holds in memory between transactions (spool bytes, the WebSocket
cursor and the refused event it must not pass, the database's data_version) and applies a
transaction's changes only once it commits; the cursor is written in the same transaction as
the events it points past. After a write fails it refuses writes until a probe write succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from bridge.errors import SpoolFullError, StoreError, StoreUnavailableError
from bridge.store import database, queries
from bridge.store.transactions import Tx, hold_cursor

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_MAX_BATCH: Final = 1000

Sleep = Callable[[float], Awaitable[None]]
"""``asyncio.sleep``, or a stand-in a test steps by hand."""


Rows = Callable[[Tx, list[Any]], list[Any]]
"""Writes rows in a transaction and returns one result per row, in order: see submit_rows."""


@dataclasses.dataclass(slots=True)
class _Op:
    fn: Callable[[Tx], object] | None  # None: a share of a rows write
    future: asyncio.Future[Any]
    ws_event_id: str | None  # a WebSocket accept: its refusal must hold the cursor back
    durable: bool  # its commit waits for the disk; see Writer.submit
    write_rows: Rows | None = None
    rows: list[Any] = dataclasses.field(default_factory=list)


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
        self.spool, self.cursor, self.data_version = state
        self.ws_gap: str | None = None  # first refused WebSocket event id, see advance_cursor
        self.failure: str | None = None  # why writes fail; None while writable
        self._conn = conn
        self._durable: bool | None = None  # the connection's synchronous mode, once set here
        self._thread = thread
        self._probe_interval = probe_interval
        self._sleep = sleep
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._probe: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()  # set and replaced on every change a waiter may want
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    def submit(
        self, fn: Callable[[Tx], _T], *, ws_event_id: str | None = None, durable: bool = True
    ) -> asyncio.Future[_T]:
        """Queue ``fn`` for the next batch; its future gives what it returned once committed.

        ``durable=False``: a write whose loss in a power cut only repeats work (a delivery
        marked done): a transaction holding only such writes commits without waiting for the
        disk (``synchronous=NORMAL``); the next durable commit makes it durable too, as the WAL
        is written in order. A crash of the process alone loses nothing either way.
        """
        # Synchronous on purpose: the queue position is taken when the caller runs, not later.
        future: asyncio.Future[_T] = self._loop.create_future()
        self._queue.put_nowait(_Op(fn, future, ws_event_id, durable))
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
        self._queue.put_nowait(_Op(None, future, ws_event_id, True, write_rows, rows))
        return future

    async def stop(self) -> None:
        """Commit what is queued, stop probing; writes queued later are never run."""
        tasks = [t for t in (self._task, self._probe) if t is not None]
        for task in tasks[1:]:
            task.cancel()
        self._queue.put_nowait(None)
        # wait, not await: stop still finishes if a forced shutdown cancelled the writer task.
        await asyncio.wait(tasks)

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
            self._fail_batch(batch, f"state database {self.path} is not writable: {self.failure}")
            return
        try:
            results, tx = await self._loop.run_in_executor(self._thread, self._commit_batch, batch)
        except sqlite3.Error as exc:
            reason = f"cannot write state database {self.path}: {exc} ({exc.sqlite_errorname})"
            self._fail_batch(batch, reason)
            if self.failure is None:
                log.error("store.write_failed", path=str(self.path), reason=str(exc))
            self.failure = reason
            if self._probe_interval is not None:
                self._probe = asyncio.create_task(
                    self._probe_loop(self._probe_interval), name="store-probe"
                )
            self.notify()
            return
        except Exception as exc:  # a bug, not the disk: fail this batch, keep the writer alive
            log.exception("store.batch_failed", path=str(self.path), batch=len(batch))
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(StoreError(f"internal store error: {exc!r}"))
            return
        freed = tx.spool < self.spool
        self.spool, self.cursor, self.ws_gap = tx.spool, tx.cursor, tx.ws_gap
        self.data_version = tx.data_version
        self.commits += 1
        for op, result in zip(batch, results, strict=True):
            if op.future.done():
                continue  # the caller was cancelled; the write stands all the same
            if isinstance(result, StoreError):
                op.future.set_exception(result)
            else:
                op.future.set_result(result)
        if self.failure is not None:  # without a probe a success tells us
            self._writable_again()
        elif freed:
            self.notify()

    def _fail_batch(self, batch: list[_Op], reason: str) -> None:
        # Nothing of the batch was stored: as for one refused event (hold_cursor), the cursor
        # must not pass its first WebSocket event.
        if self.ws_gap is None:
            self.ws_gap = next((op.ws_event_id for op in batch if op.ws_event_id), None)
        for op in batch:
            if not op.future.done():
                op.future.set_exception(StoreUnavailableError(f"{reason}; nothing was stored"))

    def _writable_again(self) -> None:
        self.failure = None
        log.info("store.writable_again", path=str(self.path))
        self.notify()

    async def _probe_loop(self, interval: float) -> None:
        try:
            while True:
                await self._sleep(interval)
                with contextlib.suppress(sqlite3.Error):
                    await self._loop.run_in_executor(self._thread, database.probe, self._conn)
                    break
        finally:
            self._probe = None
        self._writable_again()

    # -- on the writer thread --------------------------------------------------------------------

    def _commit_batch(self, batch: list[_Op]) -> tuple[list[object], Tx]:
        conn = self._conn
        durable = any(op.durable for op in batch)
        if durable is not self._durable:
            database.set_durable(conn, durable)
            self._durable = durable
        database.begin(conn)
        try:
            (version,) = conn.execute("PRAGMA data_version").fetchone()
            if version != self.data_version:  # another process committed: reload what we cache
                state = queries.read_state(conn)
            else:
                state = queries.State(self.spool, self.cursor, version)
            tx = Tx(conn, state, self.ws_gap)
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
            if tx.cursor != cursor_before:
                queries.set_meta(conn, "cursor", tx.cursor)
            if tx.last_event_at is not None:
                queries.set_meta(conn, "last_event_at", tx.last_event_at)
            conn.execute("COMMIT")
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
