"""Messages the stream removed before the consumer gave them to this process: its limits
(``max_age``, ``max_msgs``, ``max_bytes``), a purge or a delete got there first. JetStream skips
them without a word; they are found from what each delivery says of itself
(:mod:`bridge.sources.nats_delivery`), and, while nothing is fetched, from a look at the consumer
and then the stream every few seconds. Between two deliveries, or a delivery and a look, with the
same or consecutive consumer sequences nothing went to another client, so:

- Without a filter every stream sequence is the consumer's: a first delivery more than one past
  the last first delivery, or a stream whose first sequence is, means the sequences between were
  removed before they were given. Exact.
- With a filter, gaps between stream sequences are other subjects' messages and say nothing. What
  is counted is what must have been removed: the messages the consumer had left when the stream's
  last sequence was ``bound``, all gone once the stream starts past ``bound`` (or a first delivery
  lies past it); else how far the count of those left dropped beyond the one delivery. Messages
  published and removed between two looks are not seen: fewer than were removed, never more.
  (Limits remove the oldest messages first; a delete in the middle is seen only by what it does
  to the count left.)

Deliveries whose consumer sequences do not follow (another client pulls from the same consumer,
or a delivery never reached this one) count nothing: the position is taken afresh. The consumer
sequences between them are counted as delivered elsewhere: a durable consumer belongs to one
sidecar, and one shared splits the stream between them without a word from JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

import nats.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from bridge.metrics import Metrics
from bridge.sources.nats_delivery import Delivery
from bridge.sources.nats_held import Sleep
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.sources.nats")

LOOK_EVERY: Final = 5.0
"""Seconds between two looks at the consumer and the stream while nothing is fetched."""
LOOK_TIMEOUT: Final = 2.0
"""Seconds one look's request may take; a stall's end waits no longer for a look in flight."""
SHARED_HINT: Final = (
    "deliveries of this durable consumer went to another client between two of this sidecar's: "
    "another bridge (or a `nats consumer next`) pulls from it, and what it takes never reaches "
    "this sidecar's sinks; give each sidecar a consumer of its own (nats.consume.consumer)"
)
HINT: Final = (
    "the stream removed these messages before this sidecar fetched them (its max_age, max_msgs "
    "or max_bytes, or a purge): raise the stream's limits, or keep this sidecar's sinks up so "
    "that its spool has room and it keeps fetching"
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Skipped:
    """``count`` messages removed unseen, all within stream sequences ``first_seq``..``last_seq``
    (with a filter, that range holds other subjects' messages too)."""

    count: int
    first_seq: int
    last_seq: int


@dataclass(slots=True)
class _Position:
    consumer_seq: int
    stream_seq: int | None
    """The stream sequence of the last first delivery; None when not known."""
    pending: int
    """Messages the consumer had left to give, as last heard."""
    bound: int | None = None
    """At least the stream's last sequence when ``pending`` was heard; None when not known."""


class SkipWatch:
    """Follows one consumer's deliveries to this process: deliveries and looks in, what was
    removed unseen out. Args:
    filtered: whether the consumer has a filter (then only what must have been removed counts).
    """

    __slots__ = ("_at", "elsewhere", "filtered")

    def __init__(self, *, filtered: bool) -> None:
        self.filtered = filtered
        self.elsewhere = 0
        """Deliveries seen to have gone to another client: consumer sequences skipped over."""
        self._at: _Position | None = None

    def bound_to(self, info: ConsumerInfo) -> None:
        """Take the consumer's position from the server, at a bind."""
        delivered = info.delivered
        self._at = None
        if delivered is not None:
            pending = info.num_pending or 0
            self._at = _Position(delivered.consumer_seq, delivered.stream_seq, pending)

    def delivered(self, delivery: Delivery) -> Skipped | None:
        """Note ``delivery``; what it shows was removed unseen since the one before, if anything."""
        at = self._at
        following = at is not None and delivery.consumer_seq == at.consumer_seq + 1
        if at is None or not following or at.stream_seq is None:
            # Another client had deliveries between, or there is nothing to compare with.
            if at is not None and delivery.consumer_seq > at.consumer_seq + 1:
                self.elsewhere += delivery.consumer_seq - at.consumer_seq - 1
            first_time = delivery.times == 1
            stream_seq = delivery.stream_seq if first_time else None
            self._at = _Position(delivery.consumer_seq, stream_seq, delivery.pending)
            return None
        if delivery.times > 1:
            # A redelivery of a message at or before the position: the position stays, and
            # what was left then is still what the next first delivery is compared with.
            at.consumer_seq = delivery.consumer_seq
            return None
        self._at = _Position(delivery.consumer_seq, delivery.stream_seq, delivery.pending)
        first, last = at.stream_seq + 1, delivery.stream_seq - 1
        if not self.filtered:
            count = last - first + 1
        elif at.bound is not None and delivery.stream_seq > at.bound:
            count = at.pending  # none of those left is there any more: each was ahead of this
        else:
            count = at.pending - 1 - delivery.pending
        return Skipped(count, first, last) if count > 0 else None

    def looked(self, info: ConsumerInfo, first_seq: int, last_seq: int) -> Skipped | None:
        """Note the consumer as ``info`` shows it, then the stream's first and last sequences
        read after it; what was removed unseen since, if anything."""
        at, delivered = self._at, info.delivered
        if at is None or at.stream_seq is None or delivered is None:
            return None
        if delivered.consumer_seq != at.consumer_seq:
            return None  # deliveries this process has not seen yet: they come first
        found = None
        if not self.filtered:
            if first_seq > at.stream_seq + 1:
                found = Skipped(first_seq - at.stream_seq - 1, at.stream_seq + 1, first_seq - 1)
                at.stream_seq = first_seq - 1  # the next delivery counts only what is beyond
            return found
        gone = at.bound is not None and first_seq > at.bound
        if gone and at.pending > 0:
            found = Skipped(at.pending, at.stream_seq + 1, first_seq - 1)
        # Taken afresh while the stream has removed nothing the consumer has not given (what is
        # left now is all there was), or once all it counted is gone (what is left now holds
        # none of those); kept while the stream removes some of them.
        if at.bound is None or gone or first_seq <= at.stream_seq + 1:
            at.pending, at.bound = info.num_pending or 0, last_seq
        return found


class SkippedMessages:
    """Counts (``/status``, the ``nats_skipped`` metric) and logs what the stream removed
    before one consumer gave it to this process.

    Args:
        stream: the stream's name.
        consumer: the durable consumer's name.
        metrics: where they are counted.
        sleep: how the time between two looks is waited out.
    """

    __slots__ = (
        "_log", "_metrics", "_shared_log", "_sleep", "_watch", "consumer", "count", "elsewhere",
        "stream",
    )  # fmt: skip

    def __init__(self, stream: str, consumer: str, metrics: Metrics, *, sleep: Sleep) -> None:
        self.stream = stream
        self.consumer = consumer
        self._metrics = metrics
        self._sleep = sleep
        self._log = Throttle()
        self._shared_log = Throttle()
        self._watch = SkipWatch(filtered=False)
        self.count = 0
        self.elsewhere = 0
        """Deliveries of the consumer that went to another client (see SkipWatch.elsewhere)."""

    def bound_to(self, info: ConsumerInfo) -> None:
        """At a bind: follow the consumer as the server has it (its filter included)."""
        config = info.config
        self._watch = SkipWatch(filtered=bool(config.filter_subject or config.filter_subjects))
        self._watch.bound_to(info)

    def delivered(self, deliveries: Sequence[Delivery | None]) -> None:
        """What one fetch brought, in the order it came."""
        before = self._watch.elsewhere
        found = [s for d in deliveries if d is not None and (s := self._watch.delivered(d))]
        self._found(found)
        if (elsewhere := self._watch.elsewhere - before) > 0:
            self.elsewhere += elsewhere
            self._metrics.nats_delivered_elsewhere.inc(elsewhere)
            if (extra := self._shared_log.admit_fields("lines_suppressed")) is not None:
                log.warning(
                    "nats.consumer_shared",
                    stream=self.stream,
                    consumer=self.consumer,
                    count=elsewhere,
                    total=self.elsewhere,
                    hint=SHARED_HINT,
                    **extra,
                )

    async def stalled(self, js: JetStreamContext | None, wait: Awaitable[T]) -> T:
        """Await ``wait``, during which nothing is fetched, looking at the consumer and the
        stream every :data:`LOOK_EVERY` seconds."""
        over = asyncio.Event()
        looking = asyncio.create_task(self._look(js, over), name="nats:skipped")
        try:
            return await wait
        finally:
            # nats-py's request (asyncio.wait_for) can swallow a cancellation that lands as its
            # answer arrives: the look ends on ``over`` too, and is waited for no longer than
            # one of its requests may take, so fetching never waits on it.
            over.set()
            looking.cancel()
            await asyncio.wait({looking}, timeout=LOOK_TIMEOUT)

    async def _look(self, js: JetStreamContext | None, over: asyncio.Event) -> None:
        if js is None:
            return  # not connected: nothing to look at, and nothing is fetched either
        while not over.is_set():
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                info = await js.consumer_info(self.stream, self.consumer, timeout=LOOK_TIMEOUT)
                state = (await js.stream_info(self.stream)).state
                if over.is_set():
                    return
                skipped = self._watch.looked(info, state.first_seq, state.last_seq)
                self._found([skipped] if skipped is not None else [])
            if not over.is_set():
                await self._sleep(LOOK_EVERY)

    def _found(self, found: Sequence[Skipped]) -> None:
        if not found:
            return
        count = sum(skipped.count for skipped in found)
        self.count += count
        self._metrics.nats_skipped.inc(count)
        if (extra := self._log.admit_fields("lines_suppressed")) is not None:
            log.warning(
                "nats.messages_skipped",
                stream=self.stream,
                consumer=self.consumer,
                count=count,
                # With a filter, what must have been removed: there may have been more.
                exact=not self._watch.filtered,
                first_seq=min(skipped.first_seq for skipped in found),
                last_seq=max(skipped.last_seq for skipped in found),
                total=self.count,
                hint=HINT,
                **extra,
            )
