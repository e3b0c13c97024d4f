"""The activity feed: each thing that happens to an event (accepted, duplicate, delivered, retrying,
dead) as it happens, for the admin server's live stream, ``openmail-bridge tail`` and the console's
throughput chart.

Publishing sits on the ingest and delivery paths, which carry thousands of events a second, so it
costs an append of a plain tuple to a bounded deque and a count in a per-second bucket; only while
someone subscribes, also a put to each subscriber's bounded queue. A record becomes an
:class:`Activity` (and JSON) only when someone reads it. Every buffer here is bounded: the recent
records, each subscriber's queue (a slow reader loses the oldest and is told how many), the
throughput rings (900 one-second buckets) and the number of sinks they count.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import operator
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypedDict

import structlog

from bridge import logs
from bridge.events import Event, Origin

if TYPE_CHECKING:
    # For annotations only: the command line's parser reads SOURCES from here, and must not
    # open the store's modules for every command it parses.
    from bridge.store import Delivery

log = structlog.get_logger("bridge.activity")

RECENT: Final = 1000
"""Records :meth:`ActivityFeed.recent` can return."""
QUEUE: Final = 1000
"""Records a subscriber may fall behind by before it loses the oldest."""
SECONDS: Final = 900
"""The throughput window: 15 minutes of one-second buckets."""
MAX_SINKS: Final = 128
"""Sinks the throughput counts at once; one idle for the whole window makes room for another."""
VIA_KEPT: Final = 10_000
"""Events remembered with the bridge-to-bridge transport they came by (``Event.via``), so their
deliveries name the same source: a delivery row keeps only OpenMail's ``origin``."""


class Kind(enum.StrEnum):
    """What happened to an event."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    DEAD = "dead"


_ACCEPTED: Final = Kind.ACCEPTED
_DUPLICATE: Final = Kind.DUPLICATE
_DELIVERED: Final = Kind.DELIVERED
_RETRYING: Final = Kind.RETRYING
_DEAD: Final = Kind.DEAD


@dataclasses.dataclass(frozen=True, slots=True)
class Activity:
    """One thing that happened to an event. ``source`` is the transport it came by (``websocket``,
    ``webhook``, ``nats``, ``test``); ``sink`` and ``attempt`` are None for accepted and duplicate
    records; ``error`` is set for retrying and dead ones."""

    ts: float
    kind: Kind
    event_id: str
    source: str
    inbox_id: str | None
    type: str
    sink: str | None = None
    attempt: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        """The record as the stream and ``tail --json`` show it, its error masked as the logs
        are (a receiver's error body may quote a credential)."""
        return {
            "ts": self.ts,
            "kind": str(self.kind),
            "event_id": self.event_id,
            "source": str(self.source),
            "inbox_id": self.inbox_id,
            "type": self.type,
            "sink": self.sink,
            "attempt": self.attempt,
            "error": logs.REDACTOR.scrub(self.error) if self.error else self.error,
        }


_Row = tuple[float, Kind, str, str, str | None, str, str | None, int | None, str | None]
"""An :class:`Activity`'s fields in order: what the feed holds until someone reads it."""
FIELDS: Final = tuple(f.name for f in dataclasses.fields(Activity))
"""A record's fields, in order: the keys of :meth:`Activity.as_dict`."""


def _activity(row: _Row) -> Activity:
    return Activity(*row)


@dataclasses.dataclass(frozen=True, slots=True)
class Lost:
    """``count`` records a subscriber fell too far behind to get, just before its next one."""

    count: int


FILTERS: Final = {"inbox": "inbox_id", "type": "type", "source": "source", "sink": "sink"}
"""Filter names (the stream's query parameters, ``tail``'s options) and the field each matches."""
SOURCES: Final = (*(str(origin) for origin in Origin), "nats", "test")
"""Every ``source`` a record can name: OpenMail's transports, then the bridge's own (an event taken
from NATS, ``bridge.sources.nats.VIA``; a test event, ``bridge.trigger.VIA``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Filter:
    """Which records a reader wants: each given field equal to its value. A ``sink`` filter leaves
    out accepted and duplicate records, which have no sink."""

    wanted: tuple[tuple[str, str], ...] = ()
    """(field, value) pairs, e.g. ``("inbox_id", "inb_1")``."""

    @classmethod
    def of(cls, given: Mapping[str, str | None]) -> Filter:
        """From filter names (:data:`FILTERS`) to values; None and empty values are no filter.

        Raises:
            ValueError: a name that is not a filter.
        """
        unknown = sorted(set(given) - set(FILTERS))
        if unknown:
            known = ", ".join(FILTERS)
            raise ValueError(f"unknown filter {', '.join(unknown)} (filters: {known})")
        return cls(tuple((FILTERS[name], value) for name, value in given.items() if value))

    @property
    def query(self) -> dict[str, str]:
        """The filter as the stream's query parameters."""
        names = {field: name for name, field in FILTERS.items()}
        return {names[field]: value for field, value in self.wanted}

    def matches(self, record: Mapping[str, object]) -> bool:
        """Whether a record, as :meth:`Activity.as_dict` gives it, is wanted."""
        return all(record.get(field) == value for field, value in self.wanted)

    def row_test(self) -> Callable[[_Row], bool] | None:
        """The same test on the feed's rows; None when everything is wanted."""
        if not self.wanted:
            return None
        fields = [FIELDS.index(field) for field, _ in self.wanted]
        values = tuple(value for _, value in self.wanted)
        # One itemgetter and one tuple comparison: this runs per record and subscriber.
        pick = operator.itemgetter(*fields, fields[0])  # two or more items: always a tuple
        values = (*values, values[0])
        return lambda row: pick(row) == values


class Subscription:
    """One reader's view of the feed from the moment it subscribed: iterate it, or :meth:`get`
    and :meth:`take`. Ends (iteration stops, ``get`` answers None) when the feed closes or the
    subscription is closed; use it as a context manager so it always is."""

    __slots__ = ("_feed", "_lost", "_queue", "_test", "_waiter", "closed", "lost")

    def __init__(self, feed: ActivityFeed, test: Callable[[_Row], bool] | None, size: int) -> None:
        self._feed = feed
        self._test = test
        self._queue: deque[_Row] = deque(maxlen=size)
        self._lost = 0
        self._waiter: asyncio.Future[None] | None = None
        self.lost = 0
        """Records lost over the subscription's life."""
        self.closed = False

    def _offer(self, row: _Row) -> None:
        if self._test is not None and not self._test(row):
            return
        queue = self._queue
        if len(queue) == queue.maxlen:
            self._lost += 1  # the append below drops the oldest
        queue.append(row)
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, limit: int) -> list[Activity | Lost]:
        """Up to ``limit`` records ready now, without waiting; a :class:`Lost` first when some
        were dropped before them."""
        taken: list[Activity | Lost] = []
        if self._lost and limit > 0:
            taken.append(Lost(self._lost))
            self.lost += self._lost
            self._lost = 0
        queue = self._queue
        while queue and len(taken) < limit:
            taken.append(_activity(queue.popleft()))
        return taken

    async def get(self) -> Activity | Lost | None:
        """The next record, waiting for one; None once the subscription has ended."""
        while True:
            if ready := self.take(1):
                return ready[0]
            if self.closed:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Activity | Lost:
        item = await self.get()
        if item is None:
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Stop receiving; what is queued can still be read."""
        if not self.closed:
            self.closed = True
            self._feed._unsubscribe(self)
            self._wake()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Ring:
    """Counts per second over the last :data:`SECONDS` seconds."""

    __slots__ = ("counts", "last")

    def __init__(self) -> None:
        self.counts = [0] * SECONDS
        self.last = 0
        """The newest second counted."""

    def add(self, ts: float, count: int = 1) -> None:
        """Count ``count`` at the time ``ts``."""
        second = int(ts)
        if second == self.last:
            self.counts[second % SECONDS] += count
        elif second > self.last:
            self._move_to(second)
            self.counts[second % SECONDS] += count
        elif second > self.last - SECONDS:
            self.counts[second % SECONDS] += count
        # else: older than the window

    def _move_to(self, second: int) -> None:
        """Make ``second`` the newest, emptying the buckets of the seconds skipped."""
        last = self.last
        if second - last >= SECONDS:
            self.counts = [0] * SECONDS
        else:
            counts = self.counts
            for s in range(last + 1, second + 1):
                counts[s % SECONDS] = 0
        self.last = second

    def window(self, end: int) -> list[int]:
        """The counts of the seconds up to ``end``, oldest first; 0 for seconds not counted."""
        counts, last = self.counts, self.last
        return [
            counts[s % SECONDS] if last - SECONDS < s <= last else 0
            for s in range(end - SECONDS + 1, end + 1)
        ]


class ThroughputSnapshot(TypedDict):
    """``/api/throughput``: per-second counts over the window, oldest first, the last one being
    the second ``end`` (still in progress)."""

    interval: int
    seconds: int
    end: int
    accepted: list[int]
    delivered: dict[str, list[int]]


class Throughput:
    """Events accepted, and delivered per sink, in each second of the last 15 minutes."""

    __slots__ = ("_delivered", "accepted")

    def __init__(self) -> None:
        self.accepted = _Ring()
        self._delivered: dict[str, _Ring] = {}

    def count_delivered(self, sink: str, ts: float, count: int = 1) -> None:
        ring = self._delivered.get(sink)
        if ring is None:
            if len(self._delivered) >= MAX_SINKS:
                self._forget_idle(int(ts))
                if len(self._delivered) >= MAX_SINKS:
                    return
            ring = self._delivered[sink] = _Ring()
        ring.add(ts, count)

    def _forget_idle(self, now: int) -> None:
        for name in [n for n, ring in self._delivered.items() if ring.last <= now - SECONDS]:
            del self._delivered[name]

    @property
    def sinks(self) -> int:
        """Sinks counted now."""
        return len(self._delivered)

    def snapshot(self, now: float) -> ThroughputSnapshot:
        """What ``/api/throughput`` answers: the window ending with the second ``now`` is in (its
        count still growing), oldest first; a sink that delivered nothing in it is left out."""
        end = int(now)
        self._forget_idle(end)
        return {
            "interval": 1,
            "seconds": SECONDS,
            "end": end,
            "accepted": self.accepted.window(end),
            "delivered": {
                name: self._delivered[name].window(end) for name in sorted(self._delivered)
            },
        }


class ActivityFeed:
    """What happens to events, for whoever watches. One per bridge, kept across reloads.

    Args:
        recent: records kept for :meth:`recent`.
        queue: records a subscriber may fall behind by.
        clock: the time records are stamped with.
    """

    def __init__(
        self,
        *,
        recent: int = RECENT,
        queue: int = QUEUE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._recent: deque[_Row] = deque(maxlen=recent)
        self._queue_size = queue
        self._clock = clock
        self._subscribers: tuple[Subscription, ...] = ()
        self._via: OrderedDict[str, str] = OrderedDict()
        self._failed = False
        self.closed = False
        self.throughput = Throughput()
        self._accepted = self.throughput.accepted

    # --- publishing (the hot path) ---------------------------------------------------------

    def publish(self, activity: Activity) -> None:
        """Record ``activity``. Never blocks, never raises."""
        a = activity
        self._publish(
            (a.ts, a.kind, a.event_id, a.source, a.inbox_id, a.type, a.sink, a.attempt, a.error)
        )

    def accepted(self, event: Event) -> None:
        """``event`` was stored, with a delivery row for each sink it is routed to."""
        self.accepted_many((event,))

    def accepted_many(self, events: Sequence[Event]) -> None:
        """:meth:`accepted` for each of ``events``, recorded together."""
        if not events:
            return
        now = self._clock()
        rows: list[_Row] = []
        for event in events:
            if event.via is not None:
                self._remember_via(event.event_id, event.via)
            rows.append(
                (now, _ACCEPTED, event.event_id, event.via or event.origin, event.inbox_id,
                 event.type, None, None, None)
            )  # fmt: skip
        self._publish_rows(rows)

    def duplicate(self, event: Event) -> None:
        """``event`` was already stored: nothing more happens to it."""
        self._event(_DUPLICATE, event)

    def delivered(self, delivery: Delivery, attempt: int) -> None:
        self.delivered_many(((delivery, attempt),))

    def delivered_many(self, delivered: Sequence[tuple[Delivery, int]]) -> None:
        """:meth:`delivered` for each ``(delivery, attempt)`` of one sink, recorded together."""
        if not delivered:
            return
        now, via = self._clock(), self._via
        rows: list[_Row] = [
            (now, _DELIVERED, d.event_id, (via.get(d.event_id) if via else None) or d.origin,
             d.inbox_id, d.type, d.sink, attempt, None)
            for d, attempt in delivered
        ]  # fmt: skip
        self._publish_rows(rows)

    def retrying(self, delivery: Delivery, attempt: int, error: str) -> None:
        """Attempt ``attempt`` failed with ``error``; another follows."""
        self._delivery(_RETRYING, delivery, attempt, error)

    def dead(self, delivery: Delivery, attempt: int, error: str) -> None:
        """``delivery`` went to the dead letters after ``attempt`` attempts."""
        self._delivery(_DEAD, delivery, attempt, error)

    # The kinds are module constants, not ``Kind.X``: an enum class attribute is a lookup this
    # path would pay on every event. The origin is used as is (a StrEnum is its value).

    def _event(self, kind: Kind, event: Event) -> None:
        source = event.via or event.origin
        now = self._clock()
        self._publish(
            (now, kind, event.event_id, source, event.inbox_id, event.type, None, None, None)
        )

    def _delivery(self, kind: Kind, delivery: Delivery, attempt: int, error: str | None) -> None:
        source = (self._via.get(delivery.event_id) if self._via else None) or delivery.origin
        now = self._clock()
        d = delivery
        self._publish((now, kind, d.event_id, source, d.inbox_id, d.type, d.sink, attempt, error))

    def _publish(self, row: _Row) -> None:
        self._publish_rows([row])

    def _publish_rows(self, rows: list[_Row]) -> None:
        """Record ``rows``, of one kind, time and sink: kept, counted at once, offered to each
        subscriber."""
        try:
            self._recent.extend(rows)
            ts, kind = rows[0][0], rows[0][1]
            if kind is _ACCEPTED:
                self._accepted.add(ts, len(rows))
            elif kind is _DELIVERED:
                self.throughput.count_delivered(rows[0][6] or "", ts, len(rows))
            for subscriber in self._subscribers:
                for row in rows:
                    subscriber._offer(row)
        except Exception as exc:
            self._publish_failed(exc)

    def _publish_failed(self, exc: Exception) -> None:
        # Watching must never cost an event: a bug here is reported once and the record lost.
        if not self._failed:
            self._failed = True
            log.error("activity.publish_failed", exc_info=exc)

    def _remember_via(self, event_id: str, via: str) -> None:
        self._via[event_id] = via
        if len(self._via) > VIA_KEPT:
            self._via.popitem(last=False)

    # --- reading ---------------------------------------------------------------------------

    def recent(self, n: int) -> list[Activity]:
        """The last ``n`` records (at most :data:`RECENT`), oldest first."""
        if n <= 0:
            return []
        rows = list(self._recent)[-n:]
        return [_activity(row) for row in rows]

    def subscribe(self, wanted: Filter | None = None) -> Subscription:
        """A subscription to the records published from now on that ``wanted`` lets through;
        one that has already ended once the feed is closed."""
        subscription = Subscription(self, wanted.row_test() if wanted else None, self._queue_size)
        if self.closed:
            subscription.closed = True
        else:
            self._subscribers = (*self._subscribers, subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers = tuple(s for s in self._subscribers if s is not subscription)

    @property
    def subscribers(self) -> int:
        """Subscriptions open now."""
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (the bridge is stopping); publishing still records."""
        self.closed = True
        for subscription in self._subscribers:
            subscription.close()
