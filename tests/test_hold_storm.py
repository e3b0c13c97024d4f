"""A storm from one sender held by a rate limit (``over: hold``) never keeps other threads waiting:
rows due further off than the horizon are parked (id, seq, lane and times, no payload) outside the
worker's window and read back from the store by id when their time comes near. Memory stays
bounded both ways, held rows go at their times in thread order, and a restart, a redrive or a
row gone from the store meanwhile loses or repeats nothing.

A real state database, a real HTTP receiver checking each signature, and an injected clock whose
sleeps end only when the test moves it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bridge import delivery
from bridge.delivery import PARKED, WINDOW, SinkWorker
from bridge.events import Event
from bridge.parking import HORIZON, Parked
from bridge.plan import Plan
from bridge.store import Delivery, Store
from tests.conftest import AGENT_SECRET, Receiver, wait_until
from tests.fake_time import START, FakeTime
from tests.test_hold import AT_ONCE, mail, opened, per_sender, row, worker

SENDER = "storm@example.com"
RATE = (20, 600.0)  # per_sender: 20/10m
CHUNK = 500  # events per accept transaction


@dataclass
class Watching(Receiver):
    """A receiver that notes when (on the fake clock) each event first arrived, and the largest
    number of rows the worker held with payloads, and parked, whenever a request came in."""

    time: FakeTime = field(default_factory=FakeTime)
    worker: SinkWorker | None = None
    at: dict[str, float] = field(default_factory=dict)
    ok: set[str] = field(default_factory=set)  # the ids of ``accepted``, to look up
    held_max: int = 0
    parked_max: int = 0

    def watch(self) -> None:
        if self.worker is not None:
            self.held_max = max(self.held_max, self.worker.in_memory)
            self.parked_max = max(self.parked_max, self.worker.parked)

    async def _handle(self, request: web.Request) -> web.Response:
        self.watch()
        event_id = json.loads(await request.read())["event_id"]
        self.at.setdefault(event_id, self.time.now)
        response = await super()._handle(request)
        if response.status == 200:
            self.ok.add(event_id)
        return response


@pytest.fixture
async def watching() -> AsyncIterator[Watching]:
    r = Watching(secret=AGENT_SECRET)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


class Spool:
    """What the test accepted, in order: each event's thread and the time it was held to."""

    def __init__(self) -> None:
        self.threads: dict[str, list[str]] = defaultdict(list)
        self.due: dict[str, float | None] = {}

    async def accept(self, store: Store, work: Sequence[tuple[Event, Plan]]) -> list[Delivery]:
        rows: list[Delivery] = []
        for start in range(0, len(work), CHUNK):
            results = await store.accept_batch(work[start : start + CHUNK])
            for (event, _), result in zip(work[start : start + CHUNK], results, strict=True):
                assert not isinstance(result, Exception)
                (one,) = result.deliveries
                assert event.thread_id is not None
                self.threads[event.thread_id].append(event.event_id)
                self.due[event.event_id] = one.not_before
                rows.append(one)
        return rows

    def held_until(self, when: float) -> int:
        """How many events are held past ``when``."""
        return sum(1 for due in self.due.values() if due is not None and due > when)

    def bursts(self) -> list[float]:
        return sorted({due for due in self.due.values() if due is not None})

    def others(self) -> list[str]:
        return [e for e, due in self.due.items() if due is None and not e.startswith("storm")]


def storm(count: int, *, threads: int = 10, prefix: str = "storm") -> list[tuple[Event, Plan]]:
    limit = per_sender(SENDER, *RATE)
    return [
        (mail(f"{prefix}_{n}", sender=SENDER, thread=f"thr_storm_{n % threads}"), limit)
        for n in range(count)
    ]


def others(threads: int, each: int, *, tag: str = "a") -> list[tuple[Event, Plan]]:
    return [
        (mail(f"other_{tag}{k}_{t}", sender=f"person{t}@example.com", thread=f"thr_{t}"), AT_ONCE)
        for k in range(each)
        for t in range(threads)
    ]


def delivered(receiver: Watching, ids: Iterable[str]) -> bool:
    return receiver.ok.issuperset(ids)


def assert_delivered_once_in_thread_order(receiver: Receiver, spool: Spool) -> None:
    ids = receiver.accepted_ids()
    assert len(ids) == len(set(ids)) == len(spool.due)
    position = {event_id: n for n, event_id in enumerate(ids)}
    for thread, events in spool.threads.items():
        assert sorted(events, key=position.__getitem__) == events, thread
    assert receiver.bad_signatures == 0


async def step_through(
    receiver: Watching, spool: Spool, agent: SinkWorker, bursts: Sequence[float]
) -> None:
    """Move the clock to each burst's time; each burst's events go exactly then."""
    for burst in bursts:
        receiver.time.advance_to(burst)
        due = [e for e, at in spool.due.items() if at == burst]
        await wait_until(lambda due=due: delivered(receiver, due), interval=0.002)  # type: ignore[misc]
        assert {receiver.at[e] for e in due} == {burst}
        receiver.watch()
        assert agent.parked <= spool.held_until(burst)


async def test_a_held_storm_leaves_other_threads_free_and_goes_at_its_times(
    tmp_path: Path, watching: Watching
) -> None:
    time = watching.time
    db = tmp_path / "bridge.db"
    spool = Spool()
    async with opened(db, time) as store:
        # The storm first, so that every other thread's events come after it in the store.
        await spool.accept(store, storm(5000))
        await spool.accept(store, others(50, 2))
    assert spool.held_until(START + 40 * 3600) > 0  # held for hours: the last burst ~41 h on
    bursts = spool.bursts()
    assert len(bursts) == 249

    threads = {"concurrency": 10}  # the storm's ten threads side by side
    async with (
        opened(db, time) as store,
        worker(tmp_path, watching, store, time, **threads) as agent,
    ):
        watching.worker = agent
        # Without moving the clock: the 100 other events and the storm's first 20.
        first = [e for e, due in spool.due.items() if due is None]
        await wait_until(lambda: delivered(watching, first))
        assert len(first) == 120
        await wait_until(lambda: agent.in_memory == 0)
        assert agent.parked == 4980
        await step_through(watching, spool, agent, bursts[:120])
        # Events of other threads arriving meanwhile go at once too.
        more = others(50, 1, tag="b")
        agent.submit(await spool.accept(store, more))
        await wait_until(lambda: delivered(watching, [e.event_id for e, _ in more]))
        assert {watching.at[e.event_id] for e, _ in more} == {bursts[119]}

    # A restart in the middle of the storm: the held rows are read again and parked again, and
    # events stored while the worker was down go at once.
    async with opened(db, time) as store:
        more = others(50, 1, tag="c")
        await spool.accept(store, more)
        async with worker(tmp_path, watching, store, time, **threads) as agent:
            watching.worker = agent
            await wait_until(lambda: delivered(watching, [e.event_id for e, _ in more]))
            assert {watching.at[e.event_id] for e, _ in more} == {bursts[119]}
            await wait_until(lambda: agent.parked == spool.held_until(bursts[119]))
            await step_through(watching, spool, agent, bursts[120:])
            await wait_until(lambda: agent.in_memory == 0)
            assert agent.parked == 0
        assert await store.pending("agent") == []

    assert_delivered_once_in_thread_order(watching, spool)
    assert watching.held_max <= WINDOW
    assert watching.parked_max <= PARKED


async def test_past_the_parked_bound_the_storm_waits_in_the_store_and_others_go(
    tmp_path: Path, watching: Watching, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More held rows than the bound: the worker parks up to it and leaves the rest of the storm
    in the store, reading on past it, so the rows after the storm go at once (one sender's flood
    held by a limit must not keep everyone else's mail waiting); the storm's remaining rows come
    back as held rows go, each burst on time and every thread in order."""
    monkeypatch.setattr(delivery, "PARKED", 100)
    time = watching.time
    spool = Spool()
    async with opened(tmp_path / "bridge.db", time) as store:
        await spool.accept(store, storm(300))
        await spool.accept(store, others(10, 2))
        async with worker(tmp_path, watching, store, time) as agent:
            watching.worker = agent
            storm_first = [e for e, due in spool.due.items() if due is None and e.startswith("st")]
            await wait_until(lambda: delivered(watching, storm_first))
            await wait_until(lambda: delivered(watching, spool.others()))
            assert {watching.at[e] for e in spool.others()} == {START}
            await wait_until(lambda: agent.in_memory == 0)
            assert agent.parked == 100
            assert spool.held_until(START) > 100  # the rest of the storm waits in the store
            await step_through(watching, spool, agent, spool.bursts())
            await wait_until(lambda: agent.in_memory == 0)
            assert agent.parked == 0
    assert_delivered_once_in_thread_order(watching, spool)
    assert watching.parked_max <= 100


async def test_a_redrive_goes_at_once_beside_a_parked_storm(
    tmp_path: Path, watching: Watching
) -> None:
    time = watching.time
    db = tmp_path / "bridge.db"
    spool = Spool()
    watching.statuses = [400]
    async with opened(db, time) as store, worker(tmp_path, watching, store, time) as agent:
        watching.worker = agent
        agent.submit(await spool.accept(store, others(1, 1)))
        await wait_until(lambda: agent.state.dead_recorded == 1)
        agent.submit(await spool.accept(store, storm(1000)))
        await wait_until(lambda: len(watching.accepted) == 20 and agent.parked == 980)

        other = await Store.open(db, exclusive=False)  # what `openmail-bridge dlq retry` does
        try:
            assert await other.dlq_retry(sink="agent") == 1
        finally:
            await other.close()
        assert await agent.resync() == 1
        await wait_until(lambda: delivered(watching, ["other_a0_0"]))
        assert watching.at["other_a0_0"] == START
        assert agent.parked == 980
        await step_through(watching, spool, agent, spool.bursts())
    assert_delivered_once_in_thread_order(watching, spool)


async def test_a_parked_row_gone_from_the_store_is_skipped(
    tmp_path: Path, watching: Watching
) -> None:
    time = watching.time
    db = tmp_path / "bridge.db"
    spool = Spool()
    async with opened(db, time) as store, worker(tmp_path, watching, store, time) as agent:
        agent.submit(await spool.accept(store, storm(100)))
        await wait_until(lambda: len(watching.accepted) == 20 and agent.parked == 80)
        other = await Store.open(db, exclusive=False)
        try:
            assert await other.drop_sink("agent") == 80  # what `dlq purge --sink` does
        finally:
            await other.close()
        time.advance_to(spool.bursts()[-1])
        await wait_until(lambda: agent.parked == 0)
        late = await spool.accept(store, others(1, 1, tag="late"))
        agent.submit(late)
        await wait_until(lambda: delivered(watching, [late[0].event_id]))
        assert len(watching.accepted) == 21
        assert agent.in_memory == 0


# --- the parked rows, without a worker ------------------------------------------------------------


def test_parked_rows_come_back_a_horizon_early_each_lane_in_order() -> None:
    parked = Parked(10)
    parked.add("a", row(1, not_before=START + 600))
    parked.add("a", row(2))  # behind the held head: comes back with it
    parked.add("a", row(3, not_before=START + 1200))
    parked.add("b", row(4, thread="thr_b", not_before=START + 300))
    assert parked.behind("a", 5)
    assert not parked.behind("c", 5)
    assert parked.next_at() == START + 300 - HORIZON

    assert parked.claim(START + 100, 10) == []
    (claimed,) = parked.claim(START + 300 - HORIZON, 10)
    assert claimed.id == 4
    assert parked.next_at() == START + 600 - HORIZON  # a claimed lane is not claimed twice
    assert parked.settle([claimed], read=True) == [claimed]
    assert 4 not in parked

    claimed_a = parked.claim(START + 600, 10)
    assert [spot.id for spot in claimed_a] == [1, 2]
    assert parked.settle(claimed_a, read=False) == []  # a failed read: they stay
    claimed_a = parked.claim(START + 600, 1)  # as far as the window has room
    assert [spot.id for spot in claimed_a] == [1]
    assert [s.id for s in parked.settle(claimed_a, read=True)] == [1]
    assert [s.id for s in parked.claim(START + 600, 10)] == [2]


def test_a_redrive_parked_before_claimed_rows_keeps_them_behind_it() -> None:
    parked = Parked(10)
    parked.add("a", row(5, not_before=START + 600))
    parked.add("a", row(6))
    claimed = parked.claim(START + 600, 10)
    parked.add("a", row(3, not_before=START + 600))  # back from the dead letters meanwhile
    assert parked.settle(claimed, read=True) == []
    assert [s.id for s in parked.claim(START + 600, 10)] == [3, 5, 6]


def test_the_bound_holds_until_a_tenth_has_come_back() -> None:
    parked = Parked(20)
    for n in range(20):
        parked.add(("t", n), row(n, thread=f"thr_{n}", not_before=START + 600 + n))
    assert not parked.accepting
    for n in range(2):
        claimed = parked.claim(START + 600 + n, 1)
        parked.settle(claimed, read=True)
        assert parked.accepting == (n == 1)
