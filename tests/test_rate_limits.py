"""Rate limits and debounce windows decided in the accept transaction (bridge/store/pacing.py), on
a real state database with an injected clock: exact sliding windows, holds in order, quarantine
and drop, counts that survive a restart, bounded keys."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.config import RateLimit
from bridge.events import Event, Origin, parse_event
from bridge.plan import Action, Limited, Note, Plan, Reason
from bridge.store import AcceptOutcome, Store
from bridge.store.pacing import rate_key


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mail(n: int, *, sender: str = "a@example.com", thread: str = "thr_1") -> Event:
    body = {
        "event": "message.received",
        "event_id": f"evt_{n}",
        "inbox_id": "inb_1",
        "thread_id": thread,
        "message": {"id": f"msg_{n}", "from": sender, "to": "agent@example.com"},
    }
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


def limited(
    sender: str = "a@example.com",
    *,
    count: int = 3,
    window: float = 10.0,
    over: str = "hold",
    max_keys: int = 100_000,
    thread: tuple[int, float, str] | None = None,
) -> Plan:
    keys = [(Reason.PER_SENDER, rate_key("agent", "sender", sender), RateLimit(count, window))]
    if thread is not None:
        n, w, thread_id = thread
        keys.append((Reason.PER_THREAD, rate_key("agent", "thread", thread_id), RateLimit(n, w)))
    return Plan(
        sinks=(),
        limited=(Limited("agent", ("agent",), tuple(keys), over, "quarantine", max_keys),),  # type: ignore[arg-type]
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "bridge.db", clock=clock)
    try:
        yield s
    finally:
        await s.close()


def rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_sliding_window_admits_exactly_count_per_window(store: Store, clock: Clock) -> None:
    got = []
    for n, at in enumerate([0, 1, 2, 3, 9.9, 10.0, 10.5, 11.0, 12.0]):
        clock.now = 1_000_000.0 + at
        result = await store.accept(mail(n), limited())
        (delivery,) = result.deliveries
        got.append((at, delivery.not_before is None))
    # 3 per 10 s, the window half-open: the hit at 0 stops counting at 10.0 exactly.
    assert got == [
        (0, True),
        (1, True),
        (2, True),
        (3, False),  # held to 10.0
        (9.9, False),  # held behind it, to 11.0
        (10.0, False),  # the slots of 10.0 and 11.0 are taken: 12.0
        (10.5, False),
        (11.0, False),
        (12.0, False),
    ]


async def test_held_events_take_the_next_free_times_in_order(store: Store, clock: Clock) -> None:
    base = clock.now
    times = []
    for n in range(7):
        result = await store.accept(mail(n), limited(count=2, window=60))
        (delivery,) = result.deliveries
        times.append(None if delivery.not_before is None else delivery.not_before - base)
        assert result.notes == (() if n < 2 else (Note("agent", Reason.PER_SENDER, Action.HELD),))
    # Two at once, then pairs a window apart: never more than 2 in any 60 s.
    assert times == [None, None, 60, 60, 120, 120, 180]
    pending = await store.pending("agent")
    assert [d.not_before for d in pending] == [None, None] + [
        base + t for t in (60, 60, 120, 120, 180)
    ]


async def test_over_the_limit_quarantine_and_drop(store: Store, clock: Clock) -> None:
    outcomes = []
    for n in range(5):
        result = await store.accept(mail(n), limited(count=2, over="quarantine"))
        outcomes.append(([d.sink for d in result.deliveries], result.notes))
    quarantined = (Note("agent", Reason.PER_SENDER, Action.QUARANTINED),)
    assert outcomes == [(["agent"], ()), (["agent"], ())] + [(["quarantine"], quarantined)] * 3
    # A quarantined or dropped event counts no hit: once the window passes, two more go at once.
    clock.now += 10
    dropped = []
    for n in range(5, 9):
        result = await store.accept(mail(n), limited(count=2, over="drop"))
        dropped.append([d.sink for d in result.deliveries])
        assert result.outcome is AcceptOutcome.ACCEPTED
    assert dropped == [["agent"], ["agent"], [], []]


async def test_a_dropped_event_is_kept_in_the_history_with_its_reason(
    store: Store, clock: Clock
) -> None:
    for n in range(3):
        await store.accept(mail(n), limited(count=2, over="drop"))
    (kept,) = await store.history()
    assert kept.event_id == "evt_2"
    assert kept.sinks == ()
    assert kept.notes == (Note("agent", Reason.PER_SENDER, Action.DROPPED),)
    full = await store.history_event("evt_2")
    assert full is not None
    assert full.payload is not None
    assert b"evt_2" in full.payload


async def test_both_limits_must_admit_and_the_later_slot_wins(store: Store, clock: Clock) -> None:
    base = clock.now
    plan = limited(count=10, window=60, thread=(1, 30.0, "thr_1"))
    first = await store.accept(mail(1), plan)
    second = await store.accept(mail(2), plan)
    assert first.deliveries[0].not_before is None
    assert second.deliveries[0].not_before == base + 30  # the thread's 1 per 30 s
    assert second.notes == (Note("agent", Reason.PER_THREAD, Action.HELD),)


async def test_a_sink_another_route_sends_to_at_once_is_not_held(store: Store) -> None:
    for n in range(2):
        await store.accept(mail(n), limited(count=1))
    plan = limited(count=1)
    union = Plan(sinks=("agent",), limited=plan.limited)
    result = await store.accept(mail(9), union)
    assert [(d.sink, d.not_before) for d in result.deliveries] == [("agent", None)]


async def test_counts_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "bridge.db"
    store = await Store.open(db, clock=clock)
    try:
        for n in range(2):
            await store.accept(mail(n), limited(count=2, over="drop"))
    finally:
        await store.close()
    store = await Store.open(db, clock=clock)
    try:
        result = await store.accept(mail(3), limited(count=2, over="drop"))
        assert result.deliveries == ()
        clock.now += 10
        result = await store.accept(mail(4), limited(count=2, over="drop"))
        assert [d.sink for d in result.deliveries] == ["agent"]
    finally:
        await store.close()


async def test_keys_are_bounded_and_idle_ones_pruned(
    tmp_path: Path, store: Store, clock: Clock
) -> None:
    for n in range(50):
        clock.now += 1
        await store.accept(
            mail(n, sender=f"s{n}@example.com"), limited(f"s{n}@example.com", max_keys=10)
        )
    db = tmp_path / "bridge.db"
    keys = [k for (k,) in rows(db, "SELECT key FROM rate_keys ORDER BY expires")]
    # The longest idle went first: the newest ten senders are the ones still counted.
    assert keys == [rate_key("agent", "sender", f"s{n}@example.com") for n in range(40, 50)]
    clock.now += 11
    await store.prune_seen()
    assert rows(db, "SELECT COUNT(*) FROM rate_keys") == [(0,)]


async def test_a_duplicate_counts_no_hit(store: Store) -> None:
    await store.accept(mail(1), limited(count=1, over="drop"))
    again = await store.accept(mail(1), limited(count=1, over="drop"))
    assert again.outcome is AcceptOutcome.DUPLICATE
    assert again.notes == ()


async def test_debounce_windows_are_tumbling_per_thread(store: Store, clock: Clock) -> None:
    store.debounce = {"agent": 5.0}
    base = clock.now
    closes = []
    for n, (at, thread) in enumerate(
        [(0, "t1"), (1, "t1"), (2, "t2"), (4.9, "t1"), (5.0, "t1"), (6, "t1"), (6, "t2")]
    ):
        clock.now = base + at
        result = await store.accept(mail(n, thread=thread), ("agent",))
        (delivery,) = result.deliveries
        assert delivery.not_before is None
        closes.append(None if delivery.window_closes is None else delivery.window_closes - base)
    assert closes == [5, 5, 7, 5, 10, 10, 7]
    assert [d.window_closes for d in await store.pending("agent")] == [base + c for c in closes]
