"""Rows a route's rate limit holds (``over: hold``): delivered at their time and not before, with
the later rows of their thread waiting behind them on that sink and other threads going on; the
times survive a restart and a stop. A real state database, a real HTTP receiver checking each
signature, and an injected clock whose sleeps end only when the test moves it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bridge.config import RateLimit
from bridge.delivery import SinkWorker
from bridge.events import Event, Origin, parse_event
from bridge.lanes import Lanes
from bridge.metrics import Metrics
from bridge.plan import Limited, Plan, Reason
from bridge.sinks.http import HttpSink
from bridge.store import Delivery, Store
from bridge.store.pacing import rate_key
from bridge.windows import may_go
from tests.conftest import AGENT_SECRET, Receiver, make_config, wait_until
from tests.fake_time import START, FakeTime


def mail(name: str, *, sender: str = "x@example.com", thread: str = "thr_a") -> Event:
    body = {
        "event": "message.received",
        "event_id": name,
        "inbox_id": "inb_1",
        "thread_id": thread,
        "message": {"id": f"msg_{name}", "from": sender, "to": "agent@example.com"},
    }
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


def per_sender(sender: str, count: int, window: float) -> Plan:
    """The agent route with ``per_sender: count/window`` and ``over: hold``."""
    key = rate_key("agent", "sender", sender)
    limit = Limited(
        "agent", ("agent",), ((Reason.PER_SENDER, key, RateLimit(count, window)),), "hold", None, 10
    )
    return Plan(sinks=(), limited=(limit,))


AT_ONCE = Plan(sinks=("agent",))


async def accept(store: Store, event: Event, plan: Plan) -> tuple[Delivery, ...]:
    result = await store.accept(event, plan)
    return result.deliveries


async def one_a_minute(store: Store, count: int) -> None:
    """``count`` events of one sender and thread under ``per_sender: 1/60s``: the first at once,
    the others held a minute apart."""
    limit = per_sender("x@example.com", 1, 60.0)
    for n in range(count):
        await accept(store, mail(f"evt_{n}"), limit)


async def idle(time: FakeTime, receiver: Receiver, *, until: float, sent: list[str]) -> None:
    """Wait until the worker sleeps on its one timer, set for ``until``, having sent ``sent``."""
    await wait_until(lambda: time.sleeping_until() == [until])
    assert receiver.accepted_ids() == sent


@contextlib.asynccontextmanager
async def worker(
    tmp_path: Path, receiver: Receiver, store: Store, time: FakeTime, **sink: Any
) -> AsyncIterator[SinkWorker]:
    """A started worker for the ``agent`` HTTP sink, on ``time``'s clock and sleep."""
    agent = {"type": "http", "url": receiver.url, "secret": AGENT_SECRET} | sink
    config = make_config(tmp_path, sinks={"agent": agent}).sinks["agent"]
    w = SinkWorker(config, HttpSink(config), store, Metrics(), sleep=time.sleep, clock=time)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(1.0)


@contextlib.asynccontextmanager
async def opened(path: Path, time: FakeTime) -> AsyncIterator[Store]:
    store = await Store.open(path, clock=time)
    try:
        yield store
    finally:
        await store.close()


async def test_a_held_row_goes_at_its_time_holding_back_its_thread_only(
    tmp_path: Path, receiver: Receiver
) -> None:
    time = FakeTime()
    async with opened(tmp_path / "bridge.db", time) as store:
        limit = per_sender("x@example.com", 2, 60.0)
        for name in ("evt_0", "evt_1"):
            await accept(store, mail(name), limit)
        (held,) = await accept(store, mail("evt_2"), limit)
        assert held.not_before == START + 60  # the store's decision this test relies on
        # Another sender, no limit: free to go, but behind the held row in its thread.
        (behind,) = await accept(store, mail("evt_3", sender="y@example.com"), AT_ONCE)
        assert behind.due is None
        await accept(store, mail("evt_4", sender="y@example.com", thread="thr_b"), AT_ONCE)

        async with worker(tmp_path, receiver, store, time) as agent:
            await wait_until(lambda: len(receiver.accepted) == 3)
            # Idle, its one timer set for the hold.
            await wait_until(lambda: time.sleeping_until() == [START + 60])
            assert set(receiver.accepted_ids()) == {"evt_0", "evt_1", "evt_4"}

            # A second before the hold ends, a new row wakes the worker: it goes, the held ones
            # do not.
            time.advance_to(START + 59)
            agent.submit(await accept(store, mail("evt_5", thread="thr_c"), AT_ONCE))
            await wait_until(lambda: "evt_5" in receiver.accepted_ids())
            assert not {"evt_2", "evt_3"} & set(receiver.accepted_ids())

            time.advance_to(START + 60)
            await wait_until(lambda: len(receiver.accepted) == 6)
            thread_a = [
                i for i in receiver.accepted_ids() if i in {"evt_0", "evt_1", "evt_2", "evt_3"}
            ]
            assert thread_a == ["evt_0", "evt_1", "evt_2", "evt_3"]
            assert receiver.accepted_ids()[-2:] == ["evt_2", "evt_3"]
            assert receiver.bad_signatures == 0
            assert await store.pending("agent") == []


async def test_a_strict_sink_waits_whole_behind_a_held_row(
    tmp_path: Path, receiver: Receiver
) -> None:
    time = FakeTime()
    async with opened(tmp_path / "bridge.db", time) as store:
        await one_a_minute(store, 2)
        await accept(store, mail("evt_2", sender="y@example.com", thread="thr_b"), AT_ONCE)
        async with worker(tmp_path, receiver, store, time, ordering="strict"):
            await idle(time, receiver, until=START + 60, sent=["evt_0"])
            time.advance_to(START + 60)
            await wait_until(lambda: len(receiver.accepted) == 3)
            assert receiver.accepted_ids() == ["evt_0", "evt_1", "evt_2"]


async def test_holds_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    time = FakeTime()
    db = tmp_path / "bridge.db"
    async with opened(db, time) as store:
        await one_a_minute(store, 3)

    time.advance_to(START + 30)
    async with opened(db, time) as store, worker(tmp_path, receiver, store, time):
        await idle(time, receiver, until=START + 60, sent=["evt_0"])
        time.advance_to(START + 60)
        await idle(time, receiver, until=START + 120, sent=["evt_0", "evt_1"])
        time.advance_to(START + 120)
        await wait_until(lambda: len(receiver.accepted) == 3)
        assert receiver.accepted_ids() == ["evt_0", "evt_1", "evt_2"]


async def test_a_stop_keeps_held_rows_for_their_time(tmp_path: Path, receiver: Receiver) -> None:
    time = FakeTime()
    db = tmp_path / "bridge.db"
    async with opened(db, time) as store:
        await one_a_minute(store, 2)
        async with worker(tmp_path, receiver, store, time):
            await idle(time, receiver, until=START + 60, sent=["evt_0"])
        # Stopped: the timer is gone and the held row was not sent early.
        assert time.sleeping_until() == []
        assert receiver.accepted_ids() == ["evt_0"]
        assert [d.event_id for d in await store.pending("agent")] == ["evt_1"]


# --- the lanes, without a worker ------------------------------------------------------------------


def row(
    n: int,
    *,
    thread: str = "thr_a",
    not_before: float | None = None,
    window_closes: float | None = None,
) -> Delivery:
    return Delivery(
        id=n, seq=n, sink="agent", event_id=f"evt_{n}", type="message.received", inbox_id="inb_1",
        thread_id=thread, origin=Origin.WEBHOOK, received_at=START, payload=b"{}", attempts=0,
        last_error=None, not_before=not_before, window_closes=window_closes,
    )  # fmt: skip


def test_a_lane_waits_for_its_head_and_the_timer_for_the_first_lane() -> None:
    lanes = Lanes("thread")
    lanes.add(row(1, not_before=START + 50), START)
    lanes.add(row(2), START)  # behind the held head
    lanes.add(row(3, thread="thr_b", not_before=START + 20), START)
    lanes.add(row(4, thread="thr_c"), START)
    assert lanes.next_at() == START + 20
    assert [d.id for _, d in lanes.take(START, batch=10, windows=False)] == [4]

    lanes.promote(START + 20)
    assert lanes.next_at() == START + 50
    assert [d.id for _, d in lanes.take(START + 20, batch=10, windows=False)] == [3]
    lanes.promote(START + 50)
    assert lanes.next_at() is None
    assert [d.id for _, d in lanes.take(START + 50, batch=10, windows=False)] == [1, 2]


def test_a_redriven_row_before_a_waiting_head_goes_at_once() -> None:
    lanes = Lanes("thread")
    lanes.add(row(5, not_before=START + 50), START)
    assert not lanes.ready
    lanes.add(row(2), START)  # an older row of the thread, back from the dead letters
    assert lanes.ready
    taken = lanes.take(START, batch=1, windows=False)
    assert [d.id for _, d in taken] == [2]
    lanes.release(taken, START)
    assert not lanes.ready
    assert lanes.next_at() == START + 50


def test_a_hold_counts_when_flushing_and_a_window_does_not() -> None:
    held = row(1, not_before=START + 10)
    gathered = row(2, window_closes=START + 10)
    assert not may_go(held, START, flushing=True)
    assert may_go(gathered, START, flushing=True)
    assert not may_go(gathered, START)
    assert may_go(gathered, START + 10)
