"""The delivered log in a running store: applied when the store opens, written ahead by sink
workers, emptied as their marks commit, and the marks that lost their worker committed all the
same.

The file itself is :mod:`bridge.store.delivered_log`; this is its lifecycle around the store's
writes, which it reaches only through the callables it is given (no import of the store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import structlog

from bridge.errors import StoreError
from bridge.store import queries, transactions
from bridge.store.delivered_log import DeliveredLog, read_ids
from bridge.store.transactions import Tx

log = structlog.get_logger(__name__)

Mark = Callable[[Sequence[int]], Awaitable[None]]
"""Commits rows delivered (the store's mark, without the log): raises StoreError when it cannot."""

Blocking = Callable[..., Awaitable[Any]]
"""Runs a blocking call off the event loop: ``await blocking(fn, *args)``."""


class DeliveredMarks:
    """The open delivered log and the marks the store owes it. Create with :meth:`open`.

    Args:
        mark: commits rows delivered.
        committed: told of the ids of each mark committed here (the store empties the log of
            them and tells its readers).
        wait_writable: returns once the store can write again; raises StoreError once closed.
    """

    def __init__(
        self,
        log_: DeliveredLog,
        mark: Mark,
        committed: Callable[[Sequence[int]], None],
        wait_writable: Callable[[], Awaitable[None]],
    ) -> None:
        self.log = log_
        self._mark = mark
        self._committed = committed
        self._wait_writable = wait_writable
        self._orphans: set[int] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        database: Path,
        token: str,
        *,
        last_id: int,
        mark: Mark,
        committed: Callable[[Sequence[int]], None],
        wait_writable: Callable[[], Awaitable[None]],
        blocking: Blocking,
    ) -> DeliveredMarks | None:
        """Commit the marks a crash left in the log of ``database``, then start the log afresh.

        Ids past ``last_id``, the largest delivery id the database ever handed out, are skipped:
        the log outlived its database's rows (restored from an older copy), and such an id may
        yet name a row of this one that was never delivered. Marks that cannot be committed now
        (a full disk) are written to the new log and committed once the store can write, so their
        rows are not delivered again meanwhile (a crash in the moment between emptying the old
        files and writing them to the new one can deliver them again: at least once holds).

        None when the files cannot be read or written: the workers then wait for each mark's
        commit, and files that could not be read keep their ids for the next open.
        """
        try:
            found = await blocking(read_ids, database, token)
        except OSError as exc:
            _unused(database, exc)
            return None
        ids = [i for i in found if i <= last_id]
        owed = False
        if ids:
            try:
                await mark(ids)
            except StoreError as exc:
                owed = True
                log.warning("store.delivered_log_not_applied", path=str(database), ids=len(ids),
                            error=str(exc), effect="committed once the state can be written; "
                            "not delivered again meanwhile")  # fmt: skip
            else:
                log.info("store.delivered_log_applied", path=str(database), ids=len(ids),
                         skipped=len(found) - len(ids))  # fmt: skip
        try:
            log_ = await blocking(DeliveredLog, database, token)
        except OSError as exc:
            _unused(database, exc)
            return None
        marks = cls(log_, mark, committed, wait_writable)
        if owed and log_.write(ids):
            marks.mark_later(ids)
        return marks

    def mark_later(self, ids: Iterable[int]) -> None:
        """Commit the marks of ``ids`` (those in the log) from here, retrying until the store can
        write: their worker stopped before they committed (a reload), or they were owed at open.
        What is still owed when the store closes stays in the log for the next open."""
        self._orphans.update(i for i in ids if i in self.log)
        if self._orphans and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._retry(), name="store:delivered-marks")

    async def _retry(self) -> None:
        while self._orphans:
            ids = sorted(self._orphans)
            try:
                await self._mark(ids)
            except StoreError:
                await self._wait_writable()
                continue
            self._orphans.difference_update(ids)
            self._committed(ids)

    async def close(self) -> None:
        """Stop retrying and close the log (whatever is owed stays in its files)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.log.close()


async def open_delivered_marks(
    database: Path,
    *,
    read: Callable[[str], Awaitable[list[Any]]],
    write: Callable[[Callable[[Tx], str]], Awaitable[str]],
    mark: Mark,
    committed: Callable[[Sequence[int]], None],
    wait_writable: Callable[[], Awaitable[None]],
    blocking: Blocking,
) -> DeliveredMarks | None:
    """:meth:`DeliveredMarks.open` for the store's database, with its token (made on its first
    open, kept in ``meta``) and its last delivery id, through the store's ``read`` and ``write``."""
    try:
        rows = await read(queries.INSTANCE_SQL)
        token = str(rows[0][0]) if rows else await write(transactions.new_instance)
        ((last,),) = await read(queries.LAST_DELIVERY_ID_SQL)
    except StoreError as exc:
        _unused(database, exc)
        return None
    return await DeliveredMarks.open(database, token, last_id=int(last), mark=mark,
                                     committed=committed, wait_writable=wait_writable,
                                     blocking=blocking)  # fmt: skip


def _unused(database: Path, exc: Exception) -> None:
    log.warning(
        "store.delivered_log_unused",
        path=str(database),
        error=str(exc),
        effect="sink workers wait for each delivered mark's commit",
    )
