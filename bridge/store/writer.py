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


@dataclasses.dataclass(slots=True)
class _Op:
    fn: Callable[[Tx], object]
    future: asyncio.Future[Any]
    ws_event_id: str | None  # a WebSocket accept: its refusal must hold the cursor back
    durable: bool  # its commit waits for the disk; see Writer.submit


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
            for op in batch:
                try:
                    results.append(op.fn(tx))
                except SpoolFullError as exc:  # this op wrote nothing; the rest of the batch stands
                    hold_cursor(tx, op.ws_event_id)
                    results.append(exc)
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
