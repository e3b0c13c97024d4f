"""Thread debounce (``debounce:`` on a sink): a thread's events wait for the window their first
opened and then go together: for an HTTP sink with ``format: batch`` as one signed POST
``{"events": [...]}``, else one by one in order, after the window. A batch fails or succeeds as a
whole; a stop flushes open windows (never a rate limit's hold); windows survive a restart and a
SIGKILL.

In-process tests run a worker on a real state database against a real receiver on 127.0.0.1,
with an injected clock whose sleeps end only when the test moves it; the crash and signal tests
run the real ``openmail-bridge run`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from standardwebhooks.webhooks import Webhook

from bridge.delivery import SinkWorker
from bridge.events import Event, Origin, parse_event
from bridge.metrics import Metrics
from bridge.parking import HORIZON
from bridge.plan import Plan
from bridge.sinks.http import EVENT_IDS_HEADER, NO_REPLY_HEADER, HttpSink
from bridge.store import Delivery, Store
from bridge.supervisor import Supervisor
from bridge.windows import together
from tests.conftest import (
    AGENT_SECRET,
    BridgeProcess,
    Received,
    Receiver,
    accepts_connections,
    bridge_config_dict,
    free_port,
    make_config,
    openmail_signature_ok,
    signed,
    start_bridge_process,
    wait_until,
    write_config,
)
from tests.fake_time import START, FakeTime
from tests.test_hold import per_sender, row

AGENT = ("agent",)


def mail(name: str, thread: str = "thr_a", **message: Any) -> Event:
    return parse_event(body(name, thread, **message), Origin.WEBHOOK)


def body(name: str, thread: str = "thr_a", **message: Any) -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": name,
            "inbox_id": "inb_1",
            "thread_id": thread,
            "occurred_at": "2026-02-24T10:05:00Z",
            "message": {"id": f"msg_{name}", "from": "x@example.com", "subject": "hi"} | message,
        }
    ).encode()


def batch_ids(item: Received) -> list[str]:
    return [event["event_id"] for event in item.json["events"]]


def batch_body(events: list[Event]) -> bytes:
    """The body a window's POST must have, built here from the received bytes."""
    return b'{"events":[' + b",".join(e.raw for e in events) + b"]}"


def agent_sink(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    sink = {"type": "http", "url": receiver.url, "debounce": "5s", "format": "batch"}
    if receiver.secret is not None:
        sink["secret"] = receiver.secret
    return sink | extra


class Rig:
    """A store and a worker for the ``agent`` sink, both on one fake clock."""

    def __init__(self, tmp_path: Path, time: FakeTime) -> None:
        self.tmp_path = tmp_path
        self.time = time
        self.store: Store | None = None
        self.worker: SinkWorker | None = None

    async def accept(self, event: Event, plan: Plan | tuple[str, ...] = AGENT) -> Delivery:
        assert self.store is not None
        result = await self.store.accept(event, plan)
        if self.worker is not None:
            self.worker.submit(result.deliveries)
        (delivery,) = result.deliveries
        return delivery

    async def window(self, count: int, prefix: str = "evt_") -> list[Event]:
        """``count`` events of one thread, accepted now: they share a debounce window."""
        events = [mail(f"{prefix}{n}") for n in range(count)]
        for event in events:
            await self.accept(event)
        return events

    async def start(self, sink: dict[str, Any], *, batch: int | None = None) -> SinkWorker:
        assert self.store is not None
        config = make_config(self.tmp_path, sinks={"agent": sink}).sinks["agent"]
        extra = {} if batch is None else {"batch": batch}
        self.worker = SinkWorker(
            config, HttpSink(config), self.store, Metrics(),
            sleep=self.time.sleep, clock=self.time, **extra,
        )  # fmt: skip
        await self.worker.start()
        return self.worker

    async def stop(self) -> None:
        if self.worker is not None:
            worker, self.worker = self.worker, None
            await worker.stop(5.0)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, debounce: float = 5.0) -> AsyncIterator[Rig]:
    time = FakeTime()
    r = Rig(tmp_path, time)
    r.store = await Store.open(tmp_path / "bridge.db", clock=time)
    r.store.debounce = {"agent": debounce}  # as the pipeline sets it from the sink's config
    try:
        yield r
    finally:
        await r.stop()
        await r.store.close()


# --- in process -----------------------------------------------------------------------------------


async def test_a_window_goes_as_one_signed_post_with_its_events_in_order(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with rig(tmp_path) as r:
        await r.start(agent_sink(receiver))
        a = [mail(f"evt_a{n}") for n in range(5)]
        b = [mail(f"evt_b{n}", "thr_b") for n in range(2)]
        for n, event in enumerate(a):
            r.time.advance_to(START + n)  # one a second: all inside the thread's 5 s window
            if n == 2:
                for other in b:
                    await r.accept(other)  # thr_b's window: START + 7
            assert (await r.accept(event)).window_closes == START + 5
        await wait_until(lambda: r.time.sleeping_until() == [START + 5])
        assert receiver.received == []

        r.time.advance_to(START + 5)
        await wait_until(lambda: len(receiver.accepted) == 1)
        await wait_until(lambda: r.time.sleeping_until() == [START + 7])
        (first,) = receiver.accepted
        assert first.body == batch_body(a)
        assert batch_ids(first) == [e.event_id for e in a]
        assert first.headers["X-Event-Id"] == "evt_a0"
        assert first.headers[EVENT_IDS_HEADER] == ",".join(e.event_id for e in a)
        assert first.headers["X-OpenMail-Bridge-Source"] == "webhook"
        assert openmail_signature_ok(AGENT_SECRET, first.headers, first.body)

        r.time.advance_to(START + 7)
        await wait_until(lambda: len(receiver.accepted) == 2)
        assert receiver.accepted[1].body == batch_body(b)
        assert receiver.bad_signatures == 0
        assert len(receiver.received) == 2
        assert r.store is not None
        assert await r.store.pending("agent") == []


async def test_without_batch_each_event_goes_alone_in_order_after_the_window(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with rig(tmp_path) as r:
        await r.start(agent_sink(receiver, format="event"))
        events = await r.window(4)
        await wait_until(lambda: r.time.sleeping_until() == [START + 5])
        assert receiver.received == []
        r.time.advance_to(START + 5)
        await wait_until(lambda: len(receiver.accepted) == 4)
        assert [item.body for item in receiver.accepted] == [e.raw for e in events]
        assert receiver.accepted_ids() == [e.event_id for e in events]


async def test_a_permanent_failure_of_a_batch_dead_letters_every_event_in_it(
    tmp_path: Path,
) -> None:
    receiver = Receiver(secret=AGENT_SECRET, statuses=[400])
    await receiver.start()
    try:
        async with rig(tmp_path) as r:
            await r.start(agent_sink(receiver))
            await r.window(5)
            r.time.advance_to(START + 5)
            assert r.store is not None
            store = r.store

            async def all_dead() -> bool:
                return len(await store.dlq_list()) == 5

            await wait_until(all_dead)
            dead = await store.dlq_list()
            assert [d.delivery.event_id for d in dead] == [f"evt_{n}" for n in range(5)]
            assert {d.error for d in dead} == {dead[0].error}
            assert "HTTP 400" in dead[0].error
            assert await store.pending("agent") == []
            assert len(receiver.received) == 1
    finally:
        await receiver.stop()


async def test_a_retryable_failure_retries_the_whole_batch(tmp_path: Path) -> None:
    receiver = Receiver(secret=AGENT_SECRET, statuses=[503])
    await receiver.start()
    try:
        async with rig(tmp_path) as r:
            await r.start(agent_sink(receiver))
            events = await r.window(3)
            r.time.advance_to(START + 5)
            assert r.store is not None
            store = r.store

            async def attempted() -> bool:
                return [d.attempts for d in await store.pending("agent")] == [1, 1, 1]

            await wait_until(attempted)  # each row of the batch records the failed attempt
            await wait_until(lambda: len(r.time.sleeping_until()) == 1)  # the retry's backoff
            r.time.advance_to(r.time.sleeping_until()[0])
            await wait_until(lambda: len(receiver.accepted) == 1)
            assert len(receiver.received) == 2
            assert receiver.received[0].body == receiver.received[1].body == batch_body(events)
            assert await store.pending("agent") == []
            assert await store.dlq_list() == []
    finally:
        await receiver.stop()


async def test_a_stop_flushes_open_windows_but_keeps_a_rate_limits_hold(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with rig(tmp_path) as r:
        await r.start(agent_sink(receiver))
        gathered = await r.window(3, "evt_a")
        limit = per_sender("x@example.com", 1, 60.0)
        first = await r.accept(mail("evt_b0", "thr_b"), limit)
        held = await r.accept(mail("evt_b1", "thr_b"), limit)
        assert (first.not_before, first.window_closes) == (None, START + 5)
        assert (held.not_before, held.window_closes) == (START + 60, START + 5)
        await wait_until(lambda: r.time.sleeping_until() == [START + 5])

        r.time.advance_to(START + 1)  # inside both windows
        await r.stop()
        bodies = sorted(item.body for item in receiver.accepted)
        assert bodies == sorted([batch_body(gathered), batch_body([mail("evt_b0", "thr_b")])])
        assert r.store is not None
        assert [d.event_id for d in await r.store.pending("agent")] == ["evt_b1"]


async def test_a_window_further_off_than_the_horizon_waits_parked_and_goes_as_one(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A ten-minute window is kept without payloads until its close comes near, then read back
    and sent as one POST at its close; a stop before then sends a parked window at once, but
    never a parked rate limit's hold."""
    async with rig(tmp_path, debounce=600.0) as r:
        worker = await r.start(agent_sink(receiver))
        events = await r.window(3)
        assert (worker.parked, worker.in_memory) == (3, 0)
        r.time.advance_to(START + 600 - HORIZON)  # the close comes near: read back, not sent
        await wait_until(lambda: worker.in_memory == 3)
        assert (worker.parked, receiver.received) == (0, [])
        r.time.advance_to(START + 600)
        await wait_until(lambda: len(receiver.accepted) == 1)
        assert receiver.accepted[0].body == batch_body(events)

        gathered = await r.window(2, "evt_b")
        limit = per_sender("x@example.com", 1, 3600.0)
        await r.accept(mail("evt_c0", "thr_c"), limit)
        held = await r.accept(mail("evt_c1", "thr_c"), limit)
        assert held.not_before == START + 4200
        assert worker.parked == 4
        await r.stop()
        bodies = sorted(item.body for item in receiver.accepted[1:])
        assert bodies == sorted([batch_body(gathered), batch_body([mail("evt_c0", "thr_c")])])
        assert r.store is not None
        assert [d.event_id for d in await r.store.pending("agent")] == ["evt_c1"]


async def test_windows_survive_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    async with rig(tmp_path) as r:
        events = await r.window(5)  # no worker: the process "dies" with the window open
    async with rig(tmp_path) as r:
        r.time.advance_to(START + 2)
        await r.start(agent_sink(receiver))
        await wait_until(lambda: r.time.sleeping_until() == [START + 5])
        assert receiver.received == []
        r.time.advance_to(START + 5)
        await wait_until(lambda: len(receiver.accepted) == 1)
        assert receiver.accepted[0].body == batch_body(events)


async def test_a_window_larger_than_a_batch_goes_in_order_in_several(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with rig(tmp_path) as r:
        await r.start(agent_sink(receiver), batch=3)
        events = await r.window(5)
        r.time.advance_to(START + 5)
        await wait_until(lambda: len(receiver.accepted) == 2)
        assert [item.body for item in receiver.accepted] == [
            batch_body(events[:3]),
            batch_body(events[3:]),
        ]


async def test_with_ordering_none_a_window_still_goes_together(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with rig(tmp_path) as r:
        await r.start(agent_sink(receiver, ordering="none"))
        events = await r.window(4)
        r.time.advance_to(START + 5)
        await wait_until(lambda: len(receiver.accepted) == 1)
        assert receiver.accepted[0].body == batch_body(events)


async def test_a_batch_verifies_with_the_standard_webhooks_library(tmp_path: Path) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = Receiver()  # no OpenMail check: these carry webhook-* headers
    await receiver.start()
    try:
        async with rig(tmp_path) as r:
            await r.start(agent_sink(receiver, secret=secret, signature="standard-webhooks"))
            events = await r.window(3)
            r.time.advance_to(START + 5)
            await wait_until(lambda: len(receiver.accepted) == 1)
    finally:
        await receiver.stop()
    (item,) = receiver.accepted
    assert Webhook(secret).verify(item.body, item.headers) == item.json
    assert item.headers["webhook-id"] == "evt_0"
    assert item.json == {"events": [json.loads(e.raw) for e in events]}


async def test_a_window_is_marked_not_to_be_answered_only_when_all_its_mail_is(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with rig(tmp_path) as r:
        await r.start(agent_sink(receiver))
        for name, thread, replyable in [
            ("evt_a0", "thr_a", False),
            ("evt_a1", "thr_a", False),
            ("evt_b0", "thr_b", False),
            ("evt_b1", "thr_b", True),
        ]:
            await r.accept(mail(name, thread, auto_replyable=replyable))
        r.time.advance_to(START + 5)
        await wait_until(lambda: len(receiver.accepted) == 2)
    marks = {batch_ids(i)[0]: i.headers.get(NO_REPLY_HEADER) for i in receiver.accepted}
    assert marks == {"evt_a0": "true", "evt_b0": None}


# --- which rows go together -----------------------------------------------------------------------


def test_together_is_the_heads_window_up_to_a_held_row_another_window_or_the_limit() -> None:
    w1, w2 = START + 5, START + 10
    now = START + 5
    a1, a2, a3 = (row(n, window_closes=w1) for n in (1, 2, 3))
    assert together([a1, a2, a3], now, limit=10) == 3
    assert together([a1, a2, a3], now, limit=2) == 2
    assert together([a1, a2, row(3, window_closes=w2)], now, limit=10) == 2
    held = row(2, window_closes=w1, not_before=START + 60)
    assert together([a1, held, a3], now, limit=10) == 1
    # Same closing time, another thread: another window.
    assert together([a1, row(2, window_closes=w1, thread="thr_b")], now, limit=10) == 1
    assert together([row(1), row(2)], now, limit=10) == 1
    assert together([a1], START + 4, limit=10) == 0
    assert together([a1, a2], START + 4, limit=10, flushing=True) == 2


# --- a real bridge, killed and signalled ----------------------------------------------------------


@pytest.fixture
def launch(tmp_path: Path, bridge_processes: list[BridgeProcess]) -> Any:
    """``launch(receiver, debounce)``: config for a bridge on fixed ports, started by ``start``."""
    ports = {"webhook": free_port(), "admin": free_port()}

    def configure(receiver: Receiver, debounce: str) -> dict[str, Any]:
        return bridge_config_dict(
            tmp_path,
            None,
            openmail={"webhook": {"listen": f"127.0.0.1:{ports['webhook']}"}},
            admin={"listen": f"127.0.0.1:{ports['admin']}"},
            sinks={"agent": agent_sink(receiver, debounce=debounce)},
        )

    async def start(data: dict[str, Any]) -> BridgeProcess:
        process = start_bridge_process(write_config(tmp_path / "bridge.yaml", data))
        bridge_processes.append(process)

        async def answers() -> bool:
            assert process.proc.poll() is None, process.stderr_path.read_text()
            url = f"http://127.0.0.1:{ports['admin']}/healthz"
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http, http.get(url) as response:
                    return response.status == 200 and await accepts_connections(ports["webhook"])
            return False

        await wait_until(answers, timeout=15)
        return process

    async def post(names: list[str]) -> None:
        url = f"http://127.0.0.1:{ports['webhook']}/webhooks"
        async with aiohttp.ClientSession() as http:
            for name in names:
                data = body(name)
                async with http.post(url, data=data, headers=signed(data)) as response:
                    assert response.status == 200  # durably stored

    return configure, start, post


async def pending_in(data: dict[str, Any]) -> list[str]:
    store = await Store.open(Path(data["state"]["path"]))
    try:
        return [d.event_id for d in await store.pending("agent")]
    finally:
        await store.close()


@pytest.mark.system
async def test_a_sigkill_inside_the_window_loses_nothing_and_the_restart_sends_one_post(
    receiver: Receiver, launch: Any
) -> None:
    configure, start, post = launch
    data = configure(receiver, "2s")
    first = await start(data)
    names = [f"evt_{n}" for n in range(5)]
    began = time.monotonic()
    await post(names)
    first.proc.kill()  # SIGKILL, inside the window
    await asyncio.to_thread(first.proc.wait, 10)
    assert time.monotonic() - began < 2.0, "too slow to kill inside the window"
    assert receiver.received == []

    again = await start(data)
    await wait_until(lambda: len(receiver.accepted) == 1, timeout=15)
    (item,) = receiver.accepted
    assert batch_ids(item) == names
    assert item.body == batch_body([mail(name) for name in names])
    assert item.headers[EVENT_IDS_HEADER] == ",".join(names)
    assert receiver.bad_signatures == 0
    again.signal(signal.SIGTERM)
    assert await asyncio.to_thread(again.wait) == 0
    assert len(receiver.received) == 1
    assert await pending_in(data) == []


@pytest.mark.system
async def test_sigterm_flushes_an_open_window(receiver: Receiver, launch: Any) -> None:
    configure, start, post = launch
    data = configure(receiver, "1h")
    bridge = await start(data)
    names = [f"evt_{n}" for n in range(3)]
    await post(names)
    assert receiver.received == []
    bridge.signal(signal.SIGTERM)
    assert await asyncio.to_thread(bridge.wait) == 0
    (item,) = receiver.accepted
    assert batch_ids(item) == names
    assert await pending_in(data) == []


async def test_a_dlq_retry_while_its_window_is_dead_lettered_is_delivered(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A window refused for good is dead-lettered row by row; a `dlq retry` from another process
    in the middle of it finds the row still held by the worker. Once released it is read back."""
    receiver.statuses = [400]  # the window's one POST: every event in it dead-letters
    sink = {"type": "http", "url": receiver.url, "secret": AGENT_SECRET, "format": "batch",
            "debounce": "100ms", "retry": {"initial": "20ms", "max": "50ms"}}  # fmt: skip
    supervisor = Supervisor(make_config(tmp_path, None, sinks={"agent": sink}))
    await supervisor.start()
    try:
        store = supervisor.store
        assert store is not None
        commit, calls, gate = store.dead_letter, [], asyncio.Event()

        async def dead_letter(delivery_id: int, **fields: Any) -> None:
            calls.append(delivery_id)
            if len(calls) == 2:  # the window's second dead letter waits: the first has committed
                await gate.wait()
            await commit(delivery_id, **fields)

        store.dead_letter = dead_letter  # type: ignore[method-assign]
        worker = supervisor.dispatcher.workers["agent"]
        resync, resyncs = worker.resync, []

        async def resync_seen() -> int:
            resyncs.append(await resync())
            return resyncs[-1]

        worker.resync = resync_seen  # type: ignore[method-assign]
        for n in range(3):
            body = json.dumps(
                {"event": "message.received", "event_id": f"evt_{n}", "inbox_id": "inb_demo",
                 "thread_id": "thr_w", "message": {"from": "a@example.com"}}
            ).encode()  # fmt: skip
            await supervisor.pipeline.accept_one(parse_event(body, Origin.WEBHOOK))
        await wait_until(lambda: len(calls) == 2)
        operator = await Store.open(store.path, exclusive=False)  # as `dlq retry` does
        try:
            assert await operator.dlq_retry(event_id="evt_0") == 1
        finally:
            await operator.close()
        await wait_until(lambda: bool(resyncs))  # the dispatcher's, while the worker holds it
        gate.set()

        def delivered() -> list[str]:  # format: batch posts {"events": [...]}
            return [e["event_id"] for r in receiver.accepted for e in r.json["events"]]

        await wait_until(lambda: delivered() == ["evt_0"])
    finally:
        await supervisor.stop()


async def test_a_wall_clock_stepped_back_opens_a_new_window(tmp_path: Path) -> None:
    # The window opened before the step closes an hour "later" by the new clock: an event joining
    # it would wait that hour too.
    async with rig(tmp_path) as r:
        first = await r.accept(mail("evt_0"))
        assert first.window_closes == START + 5
        r.time.now = START - 3600  # stepped back (FakeTime.advance_to only moves forward)
        second = await r.accept(mail("evt_1"))
        assert second.window_closes == START - 3600 + 5
