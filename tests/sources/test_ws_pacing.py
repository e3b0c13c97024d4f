"""OpenMail's client-message limit (30 in 10 s, else close 4029): the pacer on its own, a catch-up
of thousands of events through the simulator, which enforces the same limit, and the silence
watchdog while a message is held back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from conftest import RecordingSpool, events_named, make_config, wait_until

from bridge import protocol
from bridge.backoff import ReconnectPolicy
from bridge.config import Config
from bridge.events import Event, Origin
from bridge.metrics import Metrics
from bridge.simulator import Simulator
from bridge.sources.websocket import STOP_TIMEOUT, WebSocketSource
from bridge.sources.ws_pacing import PACE_SLACK, Pacer
from bridge.store import Store
from tests.fake_time import START, FakeTime

LIMIT = protocol.RATE_LIMIT_MESSAGES
WINDOW = protocol.RATE_LIMIT_WINDOW + PACE_SLACK


class RunningTime:
    """A clock that moves only when something sleeps on it, by exactly the sleep: a catch-up paced
    over minutes of this time takes a moment of the test's."""

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def iso_ago(seconds: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def admitted_at_once(pacer: Pacer, count: int) -> None:
    for _ in range(count):
        assert await pacer.admit() == 0.0


# --- the pacer -----------------------------------------------------------------------------------


async def test_the_message_past_the_limit_waits_for_the_oldest_to_leave_the_window() -> None:
    clock = FakeTime()
    pacer = Pacer(clock=clock, sleep=clock.sleep)
    await admitted_at_once(pacer, LIMIT)
    held = asyncio.ensure_future(pacer.admit())
    await wait_until(lambda: pacer.holding)
    assert clock.sleeping_until() == [START + WINDOW]
    clock.advance_to(START + WINDOW - 0.5)
    await asyncio.sleep(0)
    assert not held.done()
    clock.advance_to(START + WINDOW)
    assert await held == pytest.approx(WINDOW)
    assert not pacer.holding


async def test_the_window_slides_one_message_at_a_time() -> None:
    clock = FakeTime()
    pacer = Pacer(limit=3, window=10.0, clock=clock, sleep=clock.sleep)
    for offset in (0.0, 4.0, 8.0):
        clock.advance_to(START + offset)
        assert await pacer.admit() == 0.0
    # The next one fits when the message sent at START has left the window, not a window later.
    clock.advance_to(START + 9.0)
    fourth = asyncio.ensure_future(pacer.admit())
    await wait_until(lambda: pacer.holding)
    assert clock.sleeping_until() == [START + 10.0]
    clock.advance_to(START + 10.0)
    assert await fourth == pytest.approx(1.0)
    clock.advance_to(START + 14.0)  # the one sent at START + 4 has left too
    assert await pacer.admit() == 0.0


async def test_messages_waiting_together_go_in_the_order_they_asked() -> None:
    clock = FakeTime()
    pacer = Pacer(limit=1, window=5.0, clock=clock, sleep=clock.sleep)
    await admitted_at_once(pacer, 1)
    order: list[str] = []

    async def send(name: str) -> None:
        await pacer.admit()
        order.append(name)

    page = asyncio.ensure_future(send("page"))
    await wait_until(lambda: pacer.holding)
    ping = asyncio.ensure_future(send("ping"))
    clock.advance_to(START + 5.0)
    await wait_until(lambda: order == ["page"] and pacer.holding)
    clock.advance_to(START + 10.0)
    await asyncio.gather(page, ping)
    assert order == ["page", "ping"]


async def test_a_stop_during_a_hold_admits_nothing() -> None:
    clock = FakeTime()
    pacer = Pacer(limit=1, window=5.0, clock=clock, sleep=clock.sleep)
    await admitted_at_once(pacer, 1)
    stopping = asyncio.Event()
    held = asyncio.ensure_future(pacer.admit(stopping))
    await wait_until(lambda: pacer.holding)
    stopping.set()
    assert await held is None
    assert not pacer.holding
    clock.advance_to(START + 5.0)
    assert await pacer.admit(stopping) == 0.0  # the abandoned message took no place


async def test_a_wake_event_does_not_stop_a_message_that_fits() -> None:
    pacer = Pacer()
    stopping = asyncio.Event()
    stopping.set()
    assert await pacer.admit(stopping) == 0.0


def test_a_pacer_that_admits_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="limit >= 1"):
        Pacer(limit=0)


# --- against the simulator -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def paced_source(
    config: Config, spool: RecordingSpool, pacing: RunningTime | None = None
) -> AsyncIterator[WebSocketSource]:
    def pacer() -> Pacer:
        if pacing is None:
            return Pacer()
        return Pacer(clock=pacing, sleep=pacing.sleep)

    policy = ReconnectPolicy(config.openmail.websocket.reconnect)
    source = WebSocketSource(config.openmail, Metrics(), policy=policy, pacing=pacer)
    await source.start(spool)
    try:
        yield source
    finally:
        await source.stop()


async def store_with_cursor(path: Path, event_id: str) -> Store:
    store = await Store.open(path)
    seen = Event(
        event_id=event_id,
        type=protocol.MESSAGE_RECEIVED,
        inbox_id="inb_demo_support",
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBSOCKET,
        received_at=time.time(),
        raw=b"{}",
    )
    await store.accept(seen, ())
    assert store.cursor == event_id
    return store


async def test_a_catch_up_of_thousands_of_events_stays_under_the_rate_limit(
    tmp_path: Path,
) -> None:
    """4,000 missed events are 40 replay pages, each asked for by a ``subscribe``: more client
    messages than OpenMail allows in 10 s. Simulator and pacer share a clock that moves only
    when the pacer holds a page back, so the simulator sees each message at the time the pacer
    let it go."""
    clock = RunningTime()
    async with Simulator(clock=clock, seed=3, ping_interval=60.0) as sim:
        first = await sim.inject()
        missed = [await sim.inject(occurred_at=iso_ago(60)) for _ in range(4000)]
        config = make_config(tmp_path, sim)
        store = await store_with_cursor(config.state.path, first)
        spool = RecordingSpool(store)
        try:
            with structlog.testing.capture_logs() as logs:
                async with paced_source(config, spool, clock) as source:
                    # The subscribe, then a page after each 100th event (the 40th finds none,
                    # and is asked for after the 4,000th event went to the spool).
                    await wait_until(
                        lambda: (
                            source.attempts > 0
                            or (
                                len(spool.accepted) >= len(missed)
                                and sum(c.messages for c in sim.connections) >= 1 + 40
                            )
                        ),
                        timeout=60,
                    )
                    assert source.attempts == 0  # never closed: no 4029, no reconnect
                    assert source.receiving
                    (conn,) = sim.connections
                    assert conn.messages == 1 + 40
        finally:
            await store.close()
    assert [event.event_id for event in spool.accepted] == missed
    assert events_named(logs, "sim.ws.rate_limited") == []
    # 40 messages at most 30 per window: the 31st waited for the first to leave it.
    paced = events_named(logs, "ws.paced")
    assert len(paced) == 1
    assert paced[0]["held_for"] == pytest.approx(WINDOW, abs=0.01)
    assert paced[0]["limit"] == LIMIT


async def test_a_hold_is_not_taken_for_a_silent_server(tmp_path: Path) -> None:
    """Pings are client messages too. With room for one message per 0.6 s, each ping waits
    0.5 s, longer than ``stale_after``: the server, which has nothing to send, is silent because
    the bridge holds back, and the watchdog must not leave it for that."""
    async with Simulator(ping_interval=60.0) as sim:
        config = make_config(
            tmp_path,
            sim,
            openmail={"websocket": {"ping_interval": "100ms", "stale_after": "300ms"}},
        )
        spool = RecordingSpool()

        def one_per_window() -> Pacer:
            return Pacer(limit=1, window=0.6)

        policy = ReconnectPolicy(config.openmail.websocket.reconnect)
        source = WebSocketSource(config.openmail, Metrics(), policy=policy, pacing=one_per_window)
        with structlog.testing.capture_logs() as logs:
            await source.start(spool)
            try:
                # Four pings after the subscribe: each held, about 2 s of holds in all.
                await wait_until(lambda: len(events_named(logs, "ws.paced")) >= 4, timeout=10)
                assert source.attempts == 0
                assert source.receiving
                (conn,) = sim.connections
                assert conn.messages >= 5
            finally:
                await source.stop()
    assert events_named(logs, "ws.stale") == []
    assert all(line["held_for"] > 0.3 for line in events_named(logs, "ws.paced"))


async def test_a_stop_during_a_held_page_ends_the_hold(tmp_path: Path) -> None:
    """Room for the subscribe and nothing more for an hour: the first page request is held.
    A stop must not wait for it (nor for stop()'s own deadline, which would cancel the loop
    and with it the commits in flight)."""
    async with Simulator(ping_interval=60.0) as sim:
        first = await sim.inject()
        missed = [await sim.inject(occurred_at=iso_ago(60)) for _ in range(150)]
        config = make_config(tmp_path, sim)
        store = await store_with_cursor(config.state.path, first)
        spool = RecordingSpool(store)
        pacers: list[Pacer] = []

        def hour_long_window() -> Pacer:
            pacers.append(Pacer(limit=1, window=3600.0))
            return pacers[-1]

        policy = ReconnectPolicy(config.openmail.websocket.reconnect)
        source = WebSocketSource(config.openmail, Metrics(), policy=policy, pacing=hour_long_window)
        try:
            await source.start(spool)
            await wait_until(lambda: len(spool.accepted) == 100 and pacers[-1].holding, timeout=3)
            async with asyncio.timeout(STOP_TIMEOUT / 2):
                await source.stop()
        finally:
            await store.close()
    assert [event.event_id for event in spool.accepted] == missed[:100]
    assert len(pacers) == 1
    assert not pacers[0].holding


async def test_a_new_key_that_ends_a_backoff_does_not_cut_the_next_catch_up_short(
    tmp_path: Path,
) -> None:
    """The key is refused, the bridge waits out a long backoff, a reload brings the right key
    and ends the wait. The connection that follows catches up over several held pages while a
    live event arrives between them: every missed event must come, none left behind the live
    one's cursor. (A pacer of one message per 0.3 s; the simulator allows as many.)"""
    async with Simulator(seed=5, ping_interval=60.0, rate_limit=(1, 0.25)) as sim:
        first = await sim.inject()
        missed = [await sim.inject(occurred_at=iso_ago(60)) for _ in range(300)]
        long_backoff = {"reconnect": {"initial": "1h", "max": "1h"}}
        refused = make_config(
            tmp_path, sim, openmail={"api_key": "om_live_wrong_key", "websocket": long_backoff}
        )
        accepted = make_config(tmp_path, sim, openmail={"websocket": long_backoff})
        store = await store_with_cursor(refused.state.path, first)
        spool = RecordingSpool(store)
        policy = ReconnectPolicy(refused.openmail.websocket.reconnect)

        def paced() -> Pacer:
            return Pacer(limit=1, window=0.3)

        source = WebSocketSource(refused.openmail, Metrics(), policy=policy, pacing=paced)
        live: list[str] = []
        try:
            with structlog.testing.capture_logs() as logs:
                await source.start(spool)
                await wait_until(lambda: source.attempts == 1, timeout=10)
                source.reconfigure(accepted.openmail)
                await wait_until(lambda: len(spool.accepted) >= 100, timeout=10)
                live.append(await sim.inject())
                await wait_until(lambda: len(spool.accepted) >= len(missed) + 1, timeout=15)
                assert source.attempts == 1  # the refused key's, and no close since
        finally:
            await source.stop()
            await store.close()
    got = [event.event_id for event in spool.accepted]
    assert [event_id for event_id in got if event_id in set(missed)] == missed
    assert live[0] in got
    assert events_named(logs, "ws.stale") == []
    assert events_named(logs, "sim.ws.rate_limited") == []
