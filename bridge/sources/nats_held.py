"""Messages the NATS source fetched and has not stored yet, in stream order.

The spool takes them as far as it has room for, from the first on; the rest wait here, never past
one that did not fit, and are stored before anything newer is fetched. While they wait, JetStream
is told they are in progress, so it neither redelivers them behind later messages nor counts
another delivery against them. On stop they are nak'd: the next consumer gets them back first.

What a fetch brings goes in by stream sequence: a redelivery of an earlier message goes ahead of
newer ones held while it was awaited (:mod:`bridge.sources.nats_redelivery`); those newer ones
are not nak'd on stop, lest they come back ahead of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg

from bridge.events import Event
from bridge.sources import Spool
from bridge.sources.nats_delivery import Delivery

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class Held:
    msg: Msg
    event: Event
    delivery: Delivery | None
    """What the delivery says of itself; None for a message without JetStream's ack subject."""
    counted: bool = False
    """Whether it was counted as not stored already: each message counts once, however long it
    waits."""

    @property
    def size(self) -> int:
        return len(self.event.raw)

    @property
    def stream_seq(self) -> float:
        return self.delivery.stream_seq if self.delivery is not None else math.inf


class HeldMessages:
    """Args:
    clock: a monotonic clock, for when JetStream last heard of the held messages.
    sleep: how the time between two in-progress notices is waited out.
    """

    __slots__ = ("_clock", "_items", "_sleep", "_told_at")

    def __init__(self, *, clock: Callable[[], float], sleep: Sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._items: deque[Held] = deque()
        self._told_at = 0.0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Held]:
        return iter(self._items)

    @property
    def head(self) -> Held:
        return self._items[0]

    def fetched(self, items: Sequence[Held]) -> None:
        """Messages just delivered, put in stream order among those held: JetStream's
        ``ack_wait`` for them starts now."""
        if self._items:
            self._items = deque(sorted([*self._items, *items], key=lambda item: item.stream_seq))
        else:
            self._items.extend(items)
        self._told_at = self._clock()

    def fitting(self, spool: Spool, storable: Callable[[Held], bool]) -> list[Held]:
        """The longest run from the first held message that may be stored and that the spool
        has room for now, counting each at its full size (one that turns out a duplicate takes
        none, which only errs safe)."""
        run: list[Held] = []
        total = 0
        for item in self._items:
            if not storable(item):
                break
            total += item.size
            if not spool.has_room_for(total):
                break
            run.append(item)
        return run

    def settle(self, handed: Sequence[Held], refused: Sequence[Held]) -> None:
        """``handed`` (the first held messages) went to the spool; ``refused`` of them stay held,
        in front, in their order."""
        for _ in handed:
            self._items.popleft()
        self._items.extendleft(reversed(refused))

    def drop_head(self) -> Held:
        return self._items.popleft()

    async def wait_room(self, spool: Spool, size: int, ack_wait: float) -> None:
        """Until an event of ``size`` bytes fits the spool, telling JetStream every third of
        ``ack_wait`` that the held messages are in progress."""
        await self.keeping(spool.wait_room(size), ack_wait)

    async def keeping(self, wait: Awaitable[None], ack_wait: float) -> None:
        """Await ``wait``, telling JetStream every third of ``ack_wait`` that the held messages
        are in progress."""
        keepalive = asyncio.create_task(self._keep_in_progress(ack_wait), name="nats:in_progress")
        try:
            await wait
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)

    async def _keep_in_progress(self, ack_wait: float) -> None:
        # A third of ack_wait leaves two notices' time for one to be late or lost.
        every = max(ack_wait / 3, 0.01)
        while True:
            due = self._told_at + every - self._clock()
            if due > 0:
                await self._sleep(due)
                continue
            for item in list(self._items):
                # The connection may be down: JetStream then redelivers after ack_wait, and the
                # copies are stored as duplicates behind these.
                with contextlib.suppress(nats.errors.Error):
                    await item.msg.in_progress()
            self._told_at = self._clock()

    async def release(self, storable: Callable[[Held], bool]) -> int:
        """On stop: nak every held message that may be stored, so it is redelivered at once and
        before newer ones; the number released. One that may not (a first delivery held behind
        redeliveries still awaited) is left to ``ack_wait``: nak'd, it would be redelivered
        ahead of those."""
        released = 0
        while self._items:
            item = self._items.popleft()
            if not storable(item):
                continue
            with contextlib.suppress(nats.errors.Error):
                await item.msg.nak()
                released += 1
        return released
