"""The activity feed's buffers and records, on the objects themselves: every buffer stays bounded
under 100,000 entries, a slow subscriber loses the oldest and is told how many, filters, the end
of a subscription, masking of errors, and the throughput rings with an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from bridge import logs
from bridge.activity import (
    FIELDS,
    MAX_SINKS,
    QUEUE,
    RECENT,
    SECONDS,
    VIA_KEPT,
    Activity,
    ActivityFeed,
    Filter,
    Kind,
    Lost,
    Subscription,
    Throughput,
)
from bridge.events import Event, Origin
from bridge.store import Delivery

MANY = 100_000
T0 = 1_771_927_500.0


def event(n: int = 0, *, inbox: str = "inb_a", via: str | None = None) -> Event:
    return Event(
        event_id=f"evt_{n}",
        type="message.received",
        inbox_id=inbox,
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBSOCKET,
        received_at=T0,
        raw=b"{}",
        via=via,
    )


def delivery(ev: Event, sink: str = "agent") -> Delivery:
    return Delivery.of_accepted(ev, id=1, seq=1, sink=sink)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def _no_secrets() -> Iterator[None]:
    yield
    logs.REDACTOR.set_secrets([])


# --- records -----------------------------------------------------------------------------------


def test_a_record_has_exactly_the_contract_fields() -> None:
    feed = ActivityFeed(clock=Clock())
    ev = event(1)
    feed.accepted(ev)
    feed.delivered(delivery(ev), 1)
    feed.retrying(delivery(ev), 2, "HTTP 503")
    accepted, delivered, retrying = (a.as_dict() for a in feed.recent(3))
    assert list(accepted) == list(FIELDS) == [
        "ts", "kind", "event_id", "source", "inbox_id", "type", "sink", "attempt", "error",
    ]  # fmt: skip
    assert accepted == {
        "ts": T0, "kind": "accepted", "event_id": "evt_1", "source": "websocket",
        "inbox_id": "inb_a", "type": "message.received", "sink": None, "attempt": None,
        "error": None,
    }  # fmt: skip
    assert (delivered["kind"], delivered["sink"], delivered["attempt"]) == ("delivered", "agent", 1)
    assert (retrying["kind"], retrying["attempt"], retrying["error"]) == ("retrying", 2, "HTTP 503")
    # Plain strings, whatever the feed holds inside: a JSON encoder sees no enum.
    assert all(type(accepted[k]) is str for k in ("kind", "source"))


@pytest.mark.usefixtures("_no_secrets")
def test_errors_are_masked_when_read() -> None:
    feed = ActivityFeed(clock=Clock())
    ev = event(1)
    feed.dead(delivery(ev), 3, "HTTP 401: token sk-live-0123456789 refused")
    logs.REDACTOR.set_secrets(["sk-live-0123456789"])
    error = feed.recent(1)[0].as_dict()["error"]
    assert error == "HTTP 401: token *** refused"
    # Also what only looks like a credential.
    feed.dead(delivery(ev), 3, "rejected Authorization: Bearer abcdefghijklmnop")
    assert "abcdefghijklmnop" not in str(feed.recent(1)[0].as_dict()["error"])


def test_publish_takes_a_ready_made_activity() -> None:
    feed = ActivityFeed()
    activity = Activity(T0, Kind.DEAD, "evt_9", "webhook", None, "x", "agent", 5, "gone")
    feed.publish(activity)
    assert feed.recent(5) == [activity]


def test_deliveries_name_the_transport_the_event_came_by() -> None:
    feed = ActivityFeed(clock=Clock())
    by_nats, direct = event(1, via="nats"), event(2)
    feed.accepted(by_nats)
    feed.accepted(direct)
    feed.delivered(delivery(by_nats), 1)
    feed.delivered(delivery(direct), 1)
    assert [a.source for a in feed.recent(4)] == ["nats", "websocket", "nats", "websocket"]


def test_the_transports_remembered_stay_bounded() -> None:
    feed = ActivityFeed(clock=Clock())
    for n in range(MANY):
        feed.accepted(event(n, via="test"))
    assert len(feed._via) == VIA_KEPT
    feed.delivered(delivery(event(MANY - 1)), 1)  # among the newest: still known
    feed.delivered(delivery(event(0)), 1)  # the oldest: forgotten, OpenMail's origin shown
    assert [a.source for a in feed.recent(2)] == ["test", "websocket"]


def test_publishing_never_raises_and_reports_a_failure_once() -> None:
    feed = ActivityFeed(clock=lambda: float("nan"))  # int(nan) fails in the throughput count
    with capture_logs() as captured:
        feed.accepted(event(1))
        feed.accepted(event(2))
    assert [e["event"] for e in captured] == ["activity.publish_failed"]


# --- bounded buffers ---------------------------------------------------------------------------


def test_recent_keeps_the_newest_and_stays_bounded() -> None:
    feed = ActivityFeed(clock=Clock())
    for n in range(MANY):
        feed.accepted(event(n))
    assert len(feed._recent) == RECENT
    kept = feed.recent(MANY)
    assert len(kept) == RECENT
    assert kept[0].event_id == f"evt_{MANY - RECENT}"
    assert kept[-1].event_id == f"evt_{MANY - 1}"
    assert [a.event_id for a in feed.recent(2)] == [f"evt_{MANY - 2}", f"evt_{MANY - 1}"]
    assert feed.recent(0) == []


def test_a_slow_subscriber_loses_the_oldest_and_is_told_how_many() -> None:
    feed = ActivityFeed(clock=Clock())
    subscription = feed.subscribe()
    for n in range(MANY):
        feed.accepted(event(n))
    assert len(subscription._queue) == QUEUE
    first, *rest = subscription.take(MANY)
    assert first == Lost(MANY - QUEUE)
    assert [getattr(a, "event_id", a) for a in rest] == [
        f"evt_{n}" for n in range(MANY - QUEUE, MANY)
    ]
    assert subscription.lost == MANY - QUEUE
    assert subscription.take(10) == []
    feed.accepted(event(MANY))  # caught up: nothing more lost
    assert subscription.take(10) == [feed.recent(1)[0]]
    assert subscription.lost == MANY - QUEUE


def test_a_loss_is_reported_where_it_happened() -> None:
    feed = ActivityFeed(queue=3, clock=Clock())
    subscription = feed.subscribe()
    for n in range(2):
        feed.accepted(event(n))
    assert [getattr(i, "event_id", i) for i in subscription.take(1)] == ["evt_0"]
    for n in range(2, 6):  # evt_1 and evt_2 are pushed out by evt_3..5
        feed.accepted(event(n))
    taken = subscription.take(10)
    assert [getattr(i, "event_id", i) for i in taken] == [Lost(2), "evt_3", "evt_4", "evt_5"]


# --- subscriptions -----------------------------------------------------------------------------


async def test_a_waiting_reader_wakes_for_each_record_and_ends_with_the_feed() -> None:
    feed = ActivityFeed(clock=Clock())
    subscription = feed.subscribe()
    seen: list[str] = []

    async def read() -> None:
        async for item in subscription:
            assert isinstance(item, Activity)
            seen.append(item.event_id)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0)  # the reader now waits
    feed.accepted(event(1))
    feed.duplicate(event(1))
    feed.close()
    await asyncio.wait_for(reader, 5)
    assert seen == ["evt_1", "evt_1"]  # what was queued is still read after the close
    assert feed.subscribers == 0
    late = feed.subscribe()
    assert await asyncio.wait_for(late.get(), 5) is None
    assert feed.subscribers == 0


def test_closing_a_subscription_stops_its_queue() -> None:
    feed = ActivityFeed(clock=Clock())
    with feed.subscribe() as subscription:
        assert feed.subscribers == 1
    assert feed.subscribers == 0
    feed.accepted(event(1))
    assert subscription.take(5) == []


def test_a_filtered_subscription_gets_only_what_it_wants() -> None:
    feed = ActivityFeed(clock=Clock())
    by_inbox = feed.subscribe(Filter.of({"inbox": "inb_b"}))
    by_sink = feed.subscribe(Filter.of({"sink": "audit", "source": "websocket"}))
    everything = feed.subscribe(Filter.of({"inbox": None, "type": ""}))  # unset: no filter
    a, b = event(1, inbox="inb_a"), event(2, inbox="inb_b")
    for ev in (a, b):
        feed.accepted(ev)
        feed.delivered(delivery(ev, "agent"), 1)
        feed.delivered(delivery(ev, "audit"), 1)

    def seen(subscription: Subscription) -> list[tuple[str, str, str | None]]:
        items = subscription.take(100)
        return [(i.kind, i.event_id, i.sink) for i in items if isinstance(i, Activity)]

    assert seen(by_inbox) == [
        ("accepted", "evt_2", None), ("delivered", "evt_2", "agent"),
        ("delivered", "evt_2", "audit"),
    ]  # fmt: skip
    assert seen(by_sink) == [("delivered", "evt_1", "audit"), ("delivered", "evt_2", "audit")]
    assert len(seen(everything)) == 6


def test_a_filter_matches_records_as_dicts_the_same_way() -> None:
    wanted = Filter.of({"inbox": "inb_b", "type": "message.received"})
    assert wanted.query == {"inbox": "inb_b", "type": "message.received"}
    assert wanted.matches({"inbox_id": "inb_b", "type": "message.received", "sink": None})
    assert not wanted.matches({"inbox_id": "inb_a", "type": "message.received"})
    assert not Filter.of({"sink": "audit"}).matches({"kind": "accepted", "sink": None})
    assert Filter().matches({})
    with pytest.raises(ValueError, match="unknown filter inbox_id"):
        Filter.of({"inbox_id": "x"})


# --- throughput --------------------------------------------------------------------------------


def test_the_throughput_snapshot_has_the_contract_shape() -> None:
    clock = Clock(T0 + 0.5)
    feed = ActivityFeed(clock=clock)
    feed.accepted(event(1))
    feed.accepted(event(2))
    clock.now += 1
    feed.delivered(delivery(event(1), "audit"), 1)
    feed.retrying(delivery(event(2), "agent"), 1, "HTTP 503")  # not a delivery
    snapshot = feed.throughput.snapshot(clock.now)
    assert set(snapshot) == {"interval", "seconds", "end", "accepted", "delivered"}
    assert (snapshot["interval"], snapshot["seconds"], snapshot["end"]) == (1, 900, int(T0) + 1)
    accepted = snapshot["accepted"]
    assert isinstance(accepted, list)
    assert len(accepted) == SECONDS
    assert accepted[-2:] == [2, 0]  # oldest first; the last bucket is the second in progress
    assert sum(accepted) == 2
    assert snapshot["delivered"] == {"audit": [0] * (SECONDS - 1) + [1]}


def test_the_throughput_window_rolls_over() -> None:
    ring = Throughput()
    base = int(T0)
    for second in range(base, base + 10):
        for _ in range(second - base + 1):  # 1, 2, ... 10 events
            ring.accepted.add(second + 0.25)
    window = ring.snapshot(base + 9)["accepted"]
    assert window[-10:] == list(range(1, 11))

    later = ring.snapshot(base + 9 + 895)["accepted"]  # 5 seconds of the ten still inside
    assert later[:5] == [6, 7, 8, 9, 10]
    assert sum(later) == 40

    ring.accepted.add(base + 9 + 897.0)  # moving on empties the buckets it skips
    moved = ring.snapshot(base + 9 + 897)["accepted"]
    assert moved[:3] == [8, 9, 10]
    assert moved[-1] == 1
    assert sum(moved) == 28

    assert sum(ring.snapshot(base + 10_000)["accepted"]) == 0  # all of it out of the window
    ring.accepted.add(base + 5.0)  # a count older than the window is dropped, not wrapped
    assert sum(ring.snapshot(base + 10_000)["accepted"]) == 0


def test_the_throughput_rings_stay_bounded() -> None:
    ring = Throughput()
    base = int(T0)
    for n in range(MANY):
        ring.accepted.add(base + n)
        ring.count_delivered(f"sink{n}", base + n)  # 100,000 sink names over 100,000 seconds
    assert len(ring.accepted.counts) == SECONDS
    assert ring.sinks <= MAX_SINKS
    snapshot = ring.snapshot(base + MANY - 1)
    assert sum(snapshot["accepted"]) == SECONDS
    delivered = snapshot["delivered"]
    assert len(delivered) <= MAX_SINKS
    assert f"sink{MANY - 1}" in delivered
    assert ring.sinks == len(delivered)


def test_a_sink_idle_for_the_whole_window_is_left_out() -> None:
    ring = Throughput()
    ring.count_delivered("old", T0)
    ring.count_delivered("new", T0 + SECONDS)
    assert list(ring.snapshot(T0 + SECONDS)["delivered"]) == ["new"]
    assert ring.sinks == 1


def test_many_sinks_at_once_are_capped_not_grown() -> None:
    ring = Throughput()
    for n in range(MANY):
        ring.count_delivered(f"sink{n}", T0)  # all in the same second: none is idle
    assert ring.sinks == MAX_SINKS
