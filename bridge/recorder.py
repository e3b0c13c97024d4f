"""Delivered rows on their way into the store: the marks of all of a sink's workers in one write.

A crash repeats at most the deliveries under way, one per worker: a worker goes on once its
rows' ids are in the store's delivered log (:mod:`bridge.store.delivered_log`), or else once
their mark is committed. Either way the mark costs no store operation of its own: one task marks
whatever has gathered in one write (each mark was an operation with its own SQL statements), then
counts and publishes them, counted once recorded so /status never shows a delivered row as still
pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from bridge.store import Delivery

Delivered = tuple[Delivery, int | None]
"""A delivered row and the attempt that delivered it (None: its first, ``attempts + 1``)."""


class Recorder:
    """Marks delivered rows in batches, in the order they were handed over; :meth:`add` gives a
    future done once they are recorded.

    Args:
        mark: records rows delivered (``Store.mark_delivered_many`` with the worker's retry
            while the store cannot write); True once committed, False when it gave up (stopping).
        recorded: called with each batch once its mark returned.
    """

    def __init__(
        self,
        mark: Callable[[list[Delivery]], Awaitable[bool]],
        recorded: Callable[[Sequence[Delivered]], None],
    ) -> None:
        self._mark = mark
        self._recorded = recorded
        self._waiting: list[Delivered] = []
        self._arrived = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._marking: list[Delivered] = []  # the rows of the mark under way
        self._given_up: list[Delivered] = []  # rows whose mark gave up: never recorded
        self._task: asyncio.Task[None] | None = None
        # Done when the rows waiting now have been recorded: shared by everyone who added them.
        self._next: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        """Rows handed over and not yet recorded."""
        return len(self._waiting) + len(self._marking)

    def unrecorded(self) -> list[Delivery]:
        """Rows handed over whose mark has not returned; after :meth:`close`, those it never
        will (their mark may still have committed)."""
        rows = (*self._given_up, *self._marking, *self._waiting)
        return [delivery for delivery, _ in rows]

    def start(self, name: str) -> None:
        self._task = asyncio.create_task(self._run(), name=name)

    def add(self, deliveries: Sequence[Delivery], attempt: int | None) -> asyncio.Future[None]:
        """Hand rows over; the future is done once their mark returned."""
        self._waiting.extend((delivery, attempt) for delivery in deliveries)
        self._idle.clear()
        self._arrived.set()
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        return self._next

    async def drain(self) -> None:
        """Wait until every row handed over has been marked (or given up on while stopping)."""
        await self._idle.wait()

    def cancel(self) -> None:
        """Stop at once; rows not yet marked stay pending in the store, delivered again later."""
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """:meth:`cancel`, and wait for the task to end."""
        self.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            if not self._waiting:
                self._idle.set()
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch, self._waiting = self._waiting, []
            done, self._next = self._next, None
            self._marking = batch
            try:
                committed = await self._mark([delivery for delivery, _ in batch])
            finally:
                if done is not None and not done.done():
                    done.set_result(None)
            self._marking = []  # kept when cancelled: unrecorded() names them
            if committed:
                self._recorded(batch)
            else:
                self._given_up.extend(batch)
