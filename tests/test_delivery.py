"""Delivery end to end: simulator -> bridge -> real local HTTP receivers and real files.

Signatures (OpenMail's, checked independently, and Standard Webhooks via the PyPI library), payload
bytes, outages, per-thread ordering modes, Retry-After, dead letters and the ``dlq`` command, retry
caps, pruning of delivered rows, a sink removed by a config reload, and a worker's window of rows
(backlogs beyond it, rows handed over or redriven while it reads the store).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge import delivery
from bridge.config import Config, load_config
from bridge.delivery import WINDOW, SinkWorker
from bridge.events import Event, Origin, parse_event
from bridge.intake import Intake
from bridge.metrics import Metrics
from bridge.simulator import Simulator
from bridge.sinks import SINK_TYPES
from bridge.sinks.http import HttpSink
from bridge.store import SinkCounts, Store
from bridge.supervisor import Supervisor
from tests.conftest import (
    AGENT_SECRET,
    WEBHOOK_SECRET,
    Received,
    Receiver,
    bridge_config_dict,
    events_named,
    make_config,
    openmail_signature_ok,
    read_lines,
    run_cli,
    running_bridge,
    sink_down,
    wait_until,
    write_config,
)

FAST_RETRY = {"initial": "50ms", "max": "300ms"}
INBOX = "inb_demo_support"
OTHER_INBOX = "inb_demo_sales"
PER_ATTEMPT_FIELDS = ("delivered_at", "attempt")


# --- helpers --------------------------------------------------------------------------------------


def http_sink(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    sink: dict[str, Any] = {"type": "http", "url": receiver.url, "retry": FAST_RETRY}
    if receiver.secret is not None:
        sink["secret"] = receiver.secret
    return sink | extra


async def wait_connected(sim: Simulator, supervisor: Supervisor) -> None:
    """The bridge is subscribed on the WebSocket; lifecycle events (webhook-only) reach it too."""
    await wait_until(lambda: any(c.subscribed for c in sim.connections))
    assert supervisor.webhook is not None
    sim.set_webhook(f"http://127.0.0.1:{supervisor.webhook.port}/webhooks", WEBHOOK_SECRET)


@contextlib.asynccontextmanager
async def bridge(config: Config, sim: Simulator) -> AsyncIterator[Supervisor]:
    async with running_bridge(config) as supervisor:
        await wait_connected(sim, supervisor)
        yield supervisor


def worker(supervisor: Supervisor, name: str) -> SinkWorker:
    assert supervisor.dispatcher is not None
    return supervisor.dispatcher.workers[name]


def worker_tasks(sink: str) -> list[asyncio.Task[Any]]:
    """The running tasks of ``sink``'s worker (``SinkWorker`` names them ``sink:<name>:<n>``)."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(f"sink:{sink}:")]


async def counts(supervisor: Supervisor, sink: str) -> tuple[int, int]:
    """(pending, dead) rows of ``sink`` in the store."""
    assert supervisor.store is not None
    c = (await supervisor.store.sink_counts()).get(sink)
    return (c.pending, c.dead) if c else (0, 0)


async def _is(value: Any, expected: Any) -> bool:
    """For ``wait_until``: an awaitable's result equals ``expected``."""
    return (await value) == expected


def ids_of(items: Iterable[Received]) -> list[str]:
    return [r.json["event_id"] for r in items]


def hits(receiver: Receiver, event_id: str) -> list[Received]:
    return [r for r in receiver.received if r.json["event_id"] == event_id]


def by_thread(items: Iterable[Received]) -> dict[str, list[str]]:
    threads: dict[str, list[str]] = defaultdict(list)
    for item in items:
        threads[item.json["thread_id"]].append(item.json["event_id"])
    return dict(threads)


def without_attempt_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in PER_ATTEMPT_FIELDS}


def metric(supervisor: Supervisor, name: str, **labels: str) -> float:
    return supervisor.metrics.registry.get_sample_value(name, labels) or 0.0


async def post_signed(port: int, body: bytes) -> None:
    """Deliver ``body`` to the bridge's webhook listener exactly as OpenMail would."""
    timestamp = str(int(time.time()))
    signature = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    headers = {
        "Content-Type": "application/json",
        "X-Timestamp": timestamp,
        "X-Signature": signature.hexdigest(),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/webhooks", data=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()


@dataclass
class TrackingReceiver(Receiver):
    """A Receiver that also records how many requests overlap and when each one ran."""

    in_flight: int = 0
    max_in_flight: int = 0
    spans: list[tuple[dict[str, Any], float, float]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        start = time.monotonic()
        try:
            return await super()._handle(request)
        finally:
            self.in_flight -= 1
            self.spans.append((json.loads(await request.read()), start, time.monotonic()))


@pytest.fixture
async def tracking() -> AsyncIterator[TrackingReceiver]:
    r = TrackingReceiver(secret=AGENT_SECRET, delay=0.1)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def assert_lanes_serial(
    spans: list[tuple[dict[str, Any], float, float]],
    lane: Callable[[dict[str, Any]], object],
    accepted_order: list[str],
) -> None:
    """Within each lane: no two deliveries overlap, and they ran in ``accepted_order``."""
    rank = {event_id: i for i, event_id in enumerate(accepted_order)}
    lanes: dict[object, list[tuple[dict[str, Any], float, float]]] = defaultdict(list)
    for span in sorted(spans, key=lambda s: s[1]):
        lanes[lane(span[0])].append(span)
    for key, items in lanes.items():
        for (before, _, end), (after, start, _) in itertools.pairwise(items):
            assert end <= start, f"lane {key}: {after['event_id']} overlapped {before['event_id']}"
        order = [rank[payload["event_id"]] for payload, _, _ in items]
        assert order == sorted(order), f"lane {key} out of order"


# --- the HTTP sink's requests ---------------------------------------------------------------------


async def test_every_delivery_verifies_as_openmail_documents_retries_included(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500]
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    with structlog.testing.capture_logs() as logs:
        async with bridge(config, sim) as supervisor:
            first = await sim.inject(inbox_id=INBOX)
            await wait_until(lambda: ids_of(receiver.accepted) == [first])
            others = [await sim.inject(inbox_id=INBOX) for _ in range(4)]
            await wait_until(lambda: len(receiver.accepted) == 5)
            retries = metric(
                supervisor, "openmail_bridge_deliveries_total", sink="agent", outcome="retry"
            )
    assert sorted(ids_of(receiver.accepted)) == sorted([first, *others])
    assert receiver.bad_signatures == 0
    attempts = hits(receiver, first)
    assert len(attempts) == 3  # 500, 500, then 200
    for item in receiver.received:
        assert openmail_signature_ok(AGENT_SECRET, item.headers, item.body)
        # Signed at the attempt, not once at accept: the timestamp is the attempt's own second.
        assert 0 <= item.at - int(item.headers["X-Timestamp"]) < 2
        assert item.headers["X-Event-Id"] == item.json["event_id"]
        assert item.headers["Content-Type"] == "application/json"
    assert len({a.body for a in attempts}) == 1  # the same bytes on every attempt
    retrying = [e for e in logs if e["event"] == "delivery.retrying" and e["sink"] == "agent"]
    # A warning for the sink's first retry; the next within the minute at debug.
    assert [(e["event_id"], e["attempt"], e["log_level"]) for e in retrying] == [
        (first, 1, "warning"),
        (first, 2, "debug"),
    ]
    assert all("HTTP 500" in e["error"] for e in retrying)
    assert retries == 2


async def test_a_retry_after_429_waits_and_is_signed_afresh(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.statuses = [429]
    receiver.extra_headers = {"Retry-After": "2"}
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    async with bridge(config, sim):
        event_id = await sim.inject(inbox_id=INBOX)
        await wait_until(lambda: ids_of(receiver.accepted) == [event_id], timeout=10)
    first, second = hits(receiver, event_id)
    assert second.at - first.at >= 2 - 0.05  # initial: 50ms, yet never before Retry-After
    assert receiver.bad_signatures == 0
    assert int(second.headers["X-Timestamp"]) > int(first.headers["X-Timestamp"])
    assert second.headers["X-Signature"] != first.headers["X-Signature"]
    for item in (first, second):  # each signed at its own attempt, and valid then
        assert openmail_signature_ok(AGENT_SECRET, item.headers, item.body)
        assert 0 <= item.at - int(item.headers["X-Timestamp"]) < 2


async def test_a_retry_after_past_max_age_dead_letters_at_once(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    # Waiting a day as asked would hold the row, and its thread behind it, past max_age.
    receiver.statuses = [503]
    receiver.extra_headers = {"Retry-After": "86400"}
    retry = FAST_RETRY | {"max_age": "30s"}
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, retry=retry)})
    async with bridge(config, sim) as sv:
        event_id = await sim.inject(inbox_id=INBOX)
        await wait_until(lambda: sv.dispatcher.workers["agent"].state.dead_recorded == 1)
        (dead,) = await sv.store.dlq_list(sink="agent")
    assert dead.delivery.event_id == event_id
    assert dead.delivery.attempts == 1
    assert "503" in (dead.delivery.last_error or "")


async def test_threads_whose_events_keep_failing_hold_up_no_other_thread(
    tmp_path: Path, sim: Simulator
) -> None:
    # As many failing threads as workers (concurrency 4), each waiting a minute between tries:
    # the other threads' events must go now, not when the failing ones reach max_age.
    failed: list[str] = []

    def answer(event: Any) -> tuple[int, str]:
        if event["thread_id"].startswith("thr_bad"):
            failed.append(event["event_id"])
            return 500, "cannot handle this one"
        return 200, ""

    receiver = Receiver(answer=answer)
    await receiver.start()
    try:
        retry = {"initial": "60s", "max": "60s"}
        config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, retry=retry)})
        async with bridge(config, sim) as sv:
            bad = [await sim.inject(inbox_id=INBOX, thread_id=f"thr_bad_{n}") for n in range(4)]
            await wait_until(lambda: sorted(failed) == sorted(bad))
            good = [await sim.inject(inbox_id=INBOX, thread_id=f"thr_ok_{n}") for n in range(10)]
            # Well inside the failing ones' minute, with room for a loaded machine.
            await wait_until(lambda: sorted(ids_of(receiver.accepted)) == sorted(good), 30)
            assert sorted(failed) == sorted(bad)  # each tried once, waiting its minute
            assert (await sv.store.sink_counts())["agent"].pending == 4
    finally:
        await receiver.stop()


async def test_standard_webhooks_deliveries_verify_with_the_library(
    tmp_path: Path, sim: Simulator
) -> None:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver = Receiver(statuses=[503])  # no OpenMail check: these carry webhook-* headers
    await receiver.start()
    try:
        sink = http_sink(receiver, secret=secret, signature="standard-webhooks")
        config = make_config(tmp_path, sim, sinks={"agent": sink})
        async with bridge(config, sim):
            sent = [await sim.inject(inbox_id=INBOX) for _ in range(3)]
            sent.append(await sim.inject(sim.lifecycle_event("inbox.suspended")))
            await wait_until(lambda: len(receiver.accepted) == 4)
    finally:
        await receiver.stop()
    assert sorted(ids_of(receiver.accepted)) == sorted(sent)
    assert len(receiver.received) == 5  # the 503 was retried
    verifier = Webhook(secret)
    for item in receiver.received:
        assert verifier.verify(item.body, item.headers) == item.json
        assert item.headers["webhook-id"] == item.json["event_id"] == item.headers["X-Event-Id"]
        assert "X-Signature" not in item.headers
    with pytest.raises(WebhookVerificationError):  # the check is real: another key fails it
        Webhook("whsec_" + base64.b64encode(b"another key").decode()).verify(
            receiver.received[0].body, receiver.received[0].headers
        )


async def test_bodies_are_the_original_payload_bytes_with_id_and_source_headers(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    # Not how the simulator would encode it: spacing, key order, escapes and a trailing newline
    # must all survive, because receivers verify signatures over the raw bytes.
    odd = (
        b'{ "event_id" : "evt_odd_bytes",\n  "event": "message.received",'
        b' "inbox_id": "inb_demo_sales", "thread_id": "thr_odd",'
        b' "message": {"subject": "caf\\u00e9 \xe2\x98\x83", "n": 1.50,'
        b' "from": "x@y.z", "to": "sales@sim.openmail.sh"}}\n'
    )
    async with bridge(config, sim) as supervisor:
        assert supervisor.webhook is not None
        ws_ids = [await sim.inject(inbox_id=INBOX) for _ in range(3)]
        lifecycle_id = await sim.inject(sim.lifecycle_event("pod.suspended"))
        await post_signed(supervisor.webhook.port, odd)
        await wait_until(lambda: len(receiver.accepted) == 5)
        await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 5)
    got = {r.json["event_id"]: r for r in receiver.accepted}
    lines = {
        json.loads(line)["event_id"]: line
        for line in (tmp_path / "events.jsonl").read_bytes().splitlines()
    }
    sent = {str(e["event_id"]): e for e in sim.events}
    for event_id in [*ws_ids, lifecycle_id]:
        item = got[event_id]
        # What the simulator sent, stamped with this delivery's attempt fields (§6) ...
        assert without_attempt_fields(item.json) == sent[event_id]
        # ... byte for byte what the file sink wrote (the simulator sends compact JSON).
        assert item.body == lines[event_id]
        assert item.headers["X-Event-Id"] == event_id
    assert got["evt_odd_bytes"].body == odd
    assert got["evt_odd_bytes"].headers["X-Event-Id"] == "evt_odd_bytes"
    sources = {event_id: r.headers["X-OpenMail-Bridge-Source"] for event_id, r in got.items()}
    assert sources == {**dict.fromkeys(ws_ids, "websocket"), lifecycle_id: "webhook",
                       "evt_odd_bytes": "webhook"}  # fmt: skip


# --- outages and ordering -------------------------------------------------------------------------


async def test_receiver_down_then_up_gets_everything_in_thread_order_file_unaffected(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    threads = [f"thr_outage_{n}" for n in range(4)]
    sent: dict[str, list[str]] = defaultdict(list)
    turn = itertools.count()

    async def inject() -> str:
        n = next(turn) % len(threads)
        inbox = INBOX if n % 2 else OTHER_INBOX
        sent[threads[n]].append(event_id := await sim.inject(inbox_id=inbox, thread_id=threads[n]))
        return event_id

    async with bridge(config, sim) as supervisor:
        assert supervisor.store is not None
        async with sink_down(receiver, inject, 6 * len(threads)) as ids:
            total = len(ids)
            await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == total)
            file_done = time.time()
            # The file sink finished while the HTTP sink was failing and retrying: it did not wait.
            assert receiver.accepted == []
            assert receiver.received
            assert receiver.received[0].at <= file_done
            assert await counts(supervisor, "agent") == (total, 0)
            # A line is written just before its row is recorded delivered, so wait for the record.
            await wait_until(lambda: _is(counts(supervisor, "audit"), (0, 0)))
            assert supervisor.store.spool_bytes > 0
        await wait_until(lambda: len(receiver.accepted) >= total, timeout=15)
        assert all(r.at > file_done for r in receiver.accepted)
        await wait_until(lambda: supervisor.store.spool_bytes == 0)
        assert await counts(supervisor, "agent") == (0, 0)
    assert sorted(ids_of(receiver.accepted)) == sorted(e for ids in sent.values() for e in ids)
    assert by_thread(receiver.accepted) == sent
    assert receiver.bad_signatures == 0
    # The file sink keeps each thread's order; across threads its concurrent lanes may interleave.
    file_threads: dict[str, list[str]] = defaultdict(list)
    for line in read_lines(tmp_path / "events.jsonl"):
        file_threads[line["thread_id"]].append(line["event_id"])
    assert dict(file_threads) == sent


async def test_thread_ordering_parallel_across_threads_up_to_concurrency(
    tmp_path: Path, sim: Simulator, tracking: TrackingReceiver
) -> None:
    config = make_config(
        tmp_path, sim, sinks={"agent": http_sink(tracking, ordering="thread", concurrency=3)}
    )
    order: list[str] = []
    async with bridge(config, sim):
        for _ in range(3):
            for n in range(5):
                order.append(await sim.inject(inbox_id=INBOX, thread_id=f"thr_par_{n}"))
        await wait_until(lambda: len(tracking.accepted) == len(order))
    assert tracking.max_in_flight == 3
    assert_lanes_serial(tracking.spans, lambda p: p["thread_id"], order)


async def test_strict_ordering_delivers_one_at_a_time_in_accept_order(
    tmp_path: Path, sim: Simulator, tracking: TrackingReceiver
) -> None:
    tracking.delay = 0.03
    config = make_config(
        tmp_path, sim, sinks={"agent": http_sink(tracking, ordering="strict", concurrency=4)}
    )
    order: list[str] = []
    async with bridge(config, sim):
        for _ in range(3):
            for n in range(3):
                order.append(await sim.inject(inbox_id=INBOX, thread_id=f"thr_strict_{n}"))
        await wait_until(lambda: len(tracking.accepted) == len(order))
    assert tracking.max_in_flight == 1
    assert ids_of(tracking.accepted) == order


async def test_no_ordering_delivers_one_thread_in_parallel(
    tmp_path: Path, sim: Simulator, tracking: TrackingReceiver
) -> None:
    config = make_config(
        tmp_path, sim, sinks={"agent": http_sink(tracking, ordering="none", concurrency=3)}
    )
    async with bridge(config, sim):
        sent = [await sim.inject(inbox_id=INBOX, thread_id="thr_one") for _ in range(6)]
        await wait_until(lambda: len(tracking.accepted) == len(sent))
    assert sorted(ids_of(tracking.accepted)) == sorted(sent)
    assert tracking.max_in_flight == 3


async def test_lifecycle_events_are_ordered_by_inbox_and_pod_events_together(
    tmp_path: Path, sim: Simulator, tracking: TrackingReceiver
) -> None:
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(tracking, concurrency=4)})
    order: list[str] = []
    async with bridge(config, sim) as supervisor:
        assert supervisor.webhook is not None
        kinds = ("inbox.suspended", "inbox.reactivated")
        for n in range(3):
            for inbox in (INBOX, OTHER_INBOX):
                event = sim.lifecycle_event(kinds[n % 2], inbox_id=inbox)
                await post_signed(supervisor.webhook.port, json.dumps(event).encode())
                order.append(str(event["event_id"]))
            event = sim.lifecycle_event(("pod.suspended", "pod.reactivated")[n % 2])
            await post_signed(supervisor.webhook.port, json.dumps(event).encode())
            order.append(str(event["event_id"]))
        await wait_until(lambda: len(tracking.accepted) == len(order))
    assert sorted(ids_of(tracking.accepted)) == sorted(order)
    assert_lanes_serial(tracking.spans, lambda p: p["inbox_id"], order)
    assert 2 <= tracking.max_in_flight <= 3  # three lanes: two inboxes and "no inbox"


# --- dead letters ---------------------------------------------------------------------------------


async def test_dlq_json_output_is_only_json(tmp_path: Path) -> None:
    """Scripts parse ``--json`` output: the store's log lines must not land on stdout."""
    config = write_config(tmp_path / "config.yaml", bridge_config_dict(tmp_path))
    await (await Store.open(tmp_path / "state" / "bridge.db")).close()  # dlq never creates one
    code, out, _ = await run_cli("dlq", "list", "-c", str(config), "--json")
    assert code == 0
    assert json.loads(out) == []


async def test_400_dead_letters_releases_the_thread_and_dlq_retry_redelivers(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.statuses = [400]
    data = bridge_config_dict(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    path = str(write_config(tmp_path / "config.yaml", data))
    thread = "thr_dead"
    async with bridge(load_config(Path(path), sink_types=SINK_TYPES), sim) as supervisor:
        dead = await sim.inject(inbox_id=INBOX, thread_id=thread)
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 1)))
        assert len(hits(receiver, dead)) == 1  # 400: never retried
        # The dead letter does not hold its thread: the next event of it goes through.
        second = await sim.inject(inbox_id=INBOX, thread_id=thread)
        await wait_until(lambda: ids_of(receiver.accepted) == [second])

        code, out, err = await run_cli("dlq", "list", "-c", path, "--json")  # while the bridge runs
        assert code == 0, err
        [item] = json.loads(out)
        assert (item["sink"], item["event_id"], item["attempts"]) == ("agent", dead, 1)
        assert item["error"].startswith(f"HTTP 400 from {receiver.url}")
        code, out, _ = await run_cli("dlq", "list", "-c", path, "--json", "--sink", "audit")
        assert (code, json.loads(out)) == (0, [])

        # Redrive while later events of the thread wait behind one that is being retried:
        # the redriven event goes before the thread's events that are still queued.
        async with sink_down(receiver, lambda: sim.inject(inbox_id=INBOX, thread_id=thread), 2) as (
            third,
            fourth,
        ):
            await wait_until(lambda: len(hits(receiver, third)) >= 1)
            with structlog.testing.capture_logs() as logs:
                code, out, err = await run_cli(
                    "dlq", "retry", "-c", path, "--event-id", dead, "--json"
                )
                assert (code, json.loads(out)) == (0, {"retried": 1}), err
                # The running bridge notices the other process's change by itself, and says so.
                await wait_until(lambda: worker(supervisor, "agent").in_memory == 3, timeout=5)
                await wait_until(lambda: bool(events_named(logs, "dlq.retried")), timeout=5)
            [retried] = events_named(logs, "dlq.retried")
            assert (retried["sink"], retried["count"], retried["log_level"]) == ("agent", 1, "info")
            assert events_named(logs, "dlq.purged") == []
        await wait_until(lambda: len(receiver.accepted) == 4)
        assert ids_of(receiver.accepted) == [second, third, dead, fourth]
        assert len(hits(receiver, dead)) == 2  # the 400, then the redrive
        assert hits(receiver, dead)[-1].headers["X-Event-Id"] == dead
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 0)))
        code, out, _ = await run_cli("dlq", "list", "-c", path, "--json")
        assert json.loads(out) == []
    assert receiver.bad_signatures == 0


async def test_dlq_purge_drops_dead_letters_by_event_and_by_sink(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.statuses = [400, 400, 400]
    data = bridge_config_dict(tmp_path, sim, sinks={"agent": http_sink(receiver, concurrency=1)})
    path = str(write_config(tmp_path / "config.yaml", data))
    async with bridge(load_config(Path(path), sink_types=SINK_TYPES), sim) as supervisor:
        dead = [await sim.inject(inbox_id=INBOX) for _ in range(3)]
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 3)))
        with structlog.testing.capture_logs() as logs:

            def purged() -> list[tuple[str, int]]:
                return [(e["sink"], e["count"]) for e in events_named(logs, "dlq.purged")]

            code, out, _ = await run_cli(
                "dlq", "purge", "-c", path, "--event-id", dead[0], "--json"
            )
            assert (code, json.loads(out)) == (0, {"purged": 1})
            await wait_until(lambda: purged() == [("agent", 1)], timeout=5)
            code, out, _ = await run_cli("dlq", "list", "-c", path, "--json")
            assert [i["event_id"] for i in json.loads(out)] == dead[1:]
            code, out, _ = await run_cli("dlq", "purge", "-c", path, "--sink", "agent", "--json")
            assert (code, json.loads(out)) == (0, {"purged": 2})
            await wait_until(lambda: purged() == [("agent", 1), ("agent", 2)], timeout=5)
            assert await counts(supervisor, "agent") == (0, 0)
            code, out, _ = await run_cli("dlq", "retry", "-c", path, "--json")
            assert json.loads(out) == {"retried": 0}
        assert events_named(logs, "dlq.retried") == []
    assert receiver.accepted == []


async def test_max_attempts_dead_letters_after_that_many_attempts(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.up = False
    retry = {"initial": "20ms", "max": "50ms", "max_attempts": 3}
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, retry=retry)})
    with structlog.testing.capture_logs() as logs:
        async with bridge(config, sim) as supervisor:
            assert supervisor.store is not None
            event_id = await sim.inject(inbox_id=INBOX)
            await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 1)))
            [letter] = await supervisor.store.dlq_list(sink="agent")
            # The worker lets go of the row once it is dead: nothing is left to make a 4th attempt.
            await wait_until(lambda: worker(supervisor, "agent").in_memory == 0)
    assert len(hits(receiver, event_id)) == 3
    assert (letter.delivery.event_id, letter.delivery.attempts) == (event_id, 3)
    assert letter.error.startswith("HTTP 503")
    [entry] = [e for e in logs if e["event"] == "delivery.dead_lettered"]
    assert (entry["event_id"], entry["attempt"], entry["permanent"]) == (event_id, 3, False)


async def test_max_age_dead_letters_an_event_retried_for_that_long(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.up = False
    retry = {"initial": "20ms", "max": "50ms", "max_age": "400ms"}
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, retry=retry)})
    async with bridge(config, sim) as supervisor:
        assert supervisor.store is not None
        event_id = await sim.inject(inbox_id=INBOX)
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 1)))
        [letter] = await supervisor.store.dlq_list(sink="agent")
    assert letter.delivery.event_id == event_id
    assert letter.dead_at - letter.delivery.received_at >= 0.4
    assert letter.delivery.attempts == len(hits(receiver, event_id)) >= 2


async def test_max_attempts_zero_keeps_retrying_until_the_receiver_returns(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    retry = {"initial": "10ms", "max": "20ms", "max_attempts": 0}
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, retry=retry)})
    async with bridge(config, sim) as supervisor:
        assert supervisor.store is not None
        async with sink_down(receiver, lambda: sim.inject(inbox_id=INBOX), 1) as [event_id]:
            await wait_until(lambda: len(hits(receiver, event_id)) >= 25)
            assert await counts(supervisor, "agent") == (1, 0)
            [row] = await supervisor.store.pending("agent")
            assert row.attempts >= 20  # progress is recorded while retrying
            assert "HTTP 503" in (row.last_error or "")
        await wait_until(lambda: ids_of(receiver.accepted) == [event_id])
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 0)))
        assert await supervisor.store.dlq_list() == []


async def test_delivered_rows_are_pruned(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    async with bridge(config, sim) as supervisor:
        store = supervisor.store
        assert store is not None
        sent = [await sim.inject(inbox_id=INBOX) for _ in range(10)]
        await wait_until(lambda: len(receiver.accepted) == 10)
        await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 10)
        await wait_until(lambda: store.spool_bytes == 0)
        assert await store.sink_counts() == {}
        assert await store.pending("agent") == await store.pending("audit") == []
    assert sorted(ids_of(receiver.accepted)) == sorted(sent)


# --- reloads one at a time -----------------------------------------------------------------------


async def test_two_reloads_at_once_leave_one_worker_per_sink(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """Two SIGHUPs close together each replace the changed sink's worker: one after the other,
    so no replaced worker is left running outside the dispatcher, delivering a second time."""
    configs = [
        make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, timeout=f"{n}s")})
        for n in (10, 11, 12)
    ]
    following = iter(configs[1:])
    supervisor = Supervisor(configs[0], reload_config=lambda: next(following))
    await supervisor.start()
    try:
        await wait_connected(sim, supervisor)
        alone = len(worker_tasks("agent"))
        assert alone > 0
        assert await asyncio.gather(supervisor.reload(), supervisor.reload()) == [True, True]
        assert supervisor.config.sinks["agent"] == configs[2].sinks["agent"]
        assert len(worker_tasks("agent")) == alone  # the replaced workers are gone
        sent = [await sim.inject(inbox_id=INBOX) for _ in range(20)]
        await wait_until(lambda: len(receiver.accepted) >= 20)
    finally:
        await supervisor.stop()
    assert sorted(ids_of(receiver.accepted)) == sorted(sent)  # each once
    assert worker_tasks("agent") == []


async def test_a_reload_asked_while_stopping_does_nothing(tmp_path: Path, sim: Simulator) -> None:
    supervisor = Supervisor(
        make_config(tmp_path, sim), reload_config=lambda: make_config(tmp_path, sim)
    )
    await supervisor.start()
    stopping = asyncio.ensure_future(supervisor.stop())
    await wait_until(lambda: supervisor.stopping)
    assert await supervisor.reload() is False
    await stopping
    assert worker_tasks("audit") == []


# --- a sink removed by a reload -------------------------------------------------------------------


async def test_a_sink_removed_by_reload_keeps_its_rows_and_resumes_when_back(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.statuses = [400]
    with_agent = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver)})
    without_agent = make_config(tmp_path, sim)
    assert set(without_agent.sinks) == {"audit"}
    next_config = [without_agent]
    supervisor = Supervisor(with_agent, reload_config=lambda: next_config[0])
    await supervisor.start()
    try:
        await wait_connected(sim, supervisor)
        dead = await sim.inject(inbox_id=INBOX, thread_id="thr_dead")
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 1)))
        async with sink_down(
            receiver, lambda: sim.inject(inbox_id=INBOX, thread_id="thr_held"), 3
        ) as held:
            await wait_until(lambda: _is(counts(supervisor, "agent"), (3, 1)))
            assert worker_tasks("agent")  # retrying the held rows

            assert await supervisor.reload()
            status = await supervisor.status()
            assert status["removed_sinks"] == ["agent"]
            sinks: Any = status["sinks"]
            assert (sinks["agent"]["pending"], sinks["agent"]["dead"]) == (3, 1)
            assert sinks["agent"]["configured"] is False
            later = [await sim.inject(inbox_id=INBOX) for _ in range(2)]
            await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 6)
            assert await counts(supervisor, "agent") == (3, 1)  # kept, and nothing new added
        # The reload stopped the removed sink's worker: none of its tasks is left to retry.
        assert worker_tasks("agent") == []
        assert receiver.accepted == []

        next_config[0] = with_agent
        assert await supervisor.reload()
        await wait_until(lambda: len(receiver.accepted) == 3)
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 1)))
        status = await supervisor.status()
        assert status["removed_sinks"] == []
    finally:
        await supervisor.stop()
    assert ids_of(receiver.accepted) == held  # in thread order; the later two were never routed
    assert not {dead, *later} & set(ids_of(receiver.accepted))
    assert not set(later) & set(ids_of(receiver.received))


async def test_dlq_purge_sink_pending_drops_the_rows_of_a_sink_gone_from_the_config_file(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    receiver.up = False
    path = tmp_path / "config.yaml"
    write_config(path, bridge_config_dict(tmp_path, sim, sinks={"agent": http_sink(receiver)}))
    async with bridge(load_config(path, sink_types=SINK_TYPES), sim) as supervisor:
        for _ in range(2):
            await sim.inject(inbox_id=INBOX)
        await wait_until(lambda: _is(counts(supervisor, "agent"), (2, 0)))
        write_config(path, bridge_config_dict(tmp_path, sim))  # the agent sink is gone
        assert await supervisor.reload()  # re-reads the file
        assert (await supervisor.status())["removed_sinks"] == ["agent"]
        # Without --pending its pending rows stay (the file may be ahead of the bridge), said so.
        code, out, err = await run_cli("dlq", "purge", "-c", str(path), "--sink", "agent", "--json")
        assert (code, json.loads(out)) == (0, {"purged": 0}), err
        assert "holds 2 pending rows" in err
        assert "--pending" in err
        assert await counts(supervisor, "agent") == (2, 0)
        code, _, err = await run_cli("dlq", "retry", "-c", str(path), "--sink", "agent")
        assert code == 2
        assert "not in the config" in err
        code, out, err = await run_cli(
            "dlq", "purge", "-c", str(path), "--sink", "agent", "--pending", "--json"
        )
        assert (code, json.loads(out)) == (0, {"purged": 2, "dead": 0, "pending": 2}), err
        status = await supervisor.status()
        assert status["removed_sinks"] == []
        assert "agent" not in status["sinks"]  # type: ignore[operator]
    assert receiver.accepted == []


# --- a worker re-reading the store while it delivers ----------------------------------------------


async def test_resync_while_delivering_never_delivers_a_row_twice(tmp_path: Path) -> None:
    """The dispatcher resyncs every worker when another process (``dlq``) commits; a row delivered
    while that read was in flight must not come back into the window as pending."""
    events_file = tmp_path / "fast.jsonl"
    config = make_config(
        tmp_path, sinks={"fast": {"type": "file", "path": str(events_file), "fsync": "always"}}
    )
    sink_config = config.sinks["fast"]
    store = await Store.open(tmp_path / "state" / "bridge.db")
    try:

        def event(n: int) -> Event:
            body = {"event": "message.received", "event_id": f"evt_{n}", "inbox_id": INBOX,
                    "thread_id": f"thr_{n % 40}"}  # fmt: skip
            return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)

        await asyncio.gather(*(store.accept(event(n), ["fast"]) for n in range(1500)))
        sink = SINK_TYPES[sink_config.type].factory(sink_config)
        fast = SinkWorker(
            sink_config, sink, store, Metrics(), batch=2
        )  # small batches, each write fsynced: many resyncs overlap deliveries
        await fast.start()
        resyncs = 0
        while (await store.sink_counts()).get("fast"):
            await fast.resync()
            resyncs += 1
        await fast.stop(2)
    finally:
        await store.close()
    lines = [line["event_id"] for line in read_lines(events_file)]
    assert resyncs > 10
    assert sorted(lines) == sorted(f"evt_{n}" for n in range(1500))


async def test_a_backlog_beyond_the_window_drains_completely_in_thread_order(
    tmp_path: Path, sim: Simulator, receiver: Receiver
) -> None:
    """More rows than a worker keeps in memory (WINDOW) wait in the store; new events keep arriving
    while the backlog drains: every one is delivered, once, in order within its thread."""
    backlog = WINDOW + 300
    config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, concurrency=8)})
    threads = [f"thr_backlog_{n}" for n in range(8)]
    sent: dict[str, list[str]] = {t: [] for t in threads}
    turn = itertools.count()

    async def inject() -> str:
        thread = threads[next(turn) % len(threads)]
        sent[thread].append(event_id := await sim.inject(inbox_id=INBOX, thread_id=thread))
        return event_id

    async with bridge(config, sim) as supervisor:
        async with sink_down(receiver, inject, backlog):
            await wait_until(lambda: _is(counts(supervisor, "agent"), (backlog, 0)), timeout=20)
            assert worker(supervisor, "agent").in_memory <= WINDOW
        for _ in range(600):  # arriving while the backlog drains
            await inject()
        total = backlog + 600
        await wait_until(lambda: len(receiver.accepted) >= total, timeout=30)
        await wait_until(lambda: _is(counts(supervisor, "agent"), (0, 0)))
    assert len(set(receiver.accepted_ids())) == len(receiver.accepted) == total
    assert by_thread(receiver.accepted) == sent


async def test_events_arriving_while_a_worker_loads_keep_order_and_none_is_stranded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A window of 4 makes the worker load from the store all the time while the pipeline keeps
    handing it fresh rows: none may be skipped for good, none overtake older ones of its thread."""
    monkeypatch.setattr(delivery, "WINDOW", 4)
    events_file = tmp_path / "events.jsonl"
    config = make_config(
        tmp_path, sinks={"audit": {"type": "file", "path": str(events_file), "fsync": "never"}}
    )
    total = 3000

    def event(n: int) -> Event:
        body = {"event": "message.received", "event_id": f"evt_{n}", "inbox_id": INBOX,
                "thread_id": f"thr_{n % 3}"}  # fmt: skip
        return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)

    async with running_bridge(config) as supervisor:
        pipeline = supervisor.pipeline
        assert pipeline is not None
        for start in range(0, total, 10):  # bursts, as a busy webhook listener produces them
            await asyncio.gather(*(pipeline.accept_one(event(n)) for n in range(start, start + 10)))
        await wait_until(lambda: len(read_lines(events_file)) >= total, timeout=15)
        await wait_until(lambda: _is(counts(supervisor, "audit"), (0, 0)))
    per_thread: dict[str, list[int]] = defaultdict(list)
    for line in read_lines(events_file):
        per_thread[line["thread_id"]].append(int(line["event_id"].removeprefix("evt_")))
    assert sum(map(len, per_thread.values())) == total
    for thread, numbers in per_thread.items():
        assert numbers == sorted(numbers), thread


@dataclass
class GatedReceiver(Receiver):
    """Holds every request until the test lets it through; ``held`` names those waiting."""

    passes: int = 0
    held: list[str] = field(default_factory=list)
    _gate: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def let_through(self, count: int) -> None:
        async with self._gate:
            self.passes += count
            self._gate.notify_all()

    async def _handle(self, request: web.Request) -> web.Response:
        event_id = json.loads(await request.read())["event_id"]
        self.held.append(event_id)
        async with self._gate:
            await self._gate.wait_for(lambda: self.passes > 0)
            self.passes -= 1
        self.held.remove(event_id)
        return await super()._handle(request)


async def test_a_row_handed_over_during_a_store_read_does_not_strand_older_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic: the window is full, older rows of the thread wait in the store, and the
    pipeline hands the worker a new row while a resync is reading. The older rows must still come,
    and before the new one."""
    monkeypatch.setattr(delivery, "WINDOW", 4)
    receiver = GatedReceiver(secret=AGENT_SECRET)
    await receiver.start()
    # One worker: nothing but the resync below reads the store while the gate is shut.
    config = make_config(tmp_path, sinks={"agent": http_sink(receiver, concurrency=1)})
    store = await Store.open(tmp_path / "state" / "bridge.db")
    agent: SinkWorker | None = None
    try:

        def event(name: str) -> Event:
            body = {"event": "message.received", "event_id": name, "inbox_id": INBOX,
                    "thread_id": "thr_window"}  # fmt: skip
            return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)

        older = [f"evt_old_{n}" for n in range(6)]
        for name in older:
            await store.accept(event(name), ["agent"])
        sink_config = config.sinks["agent"]
        agent = SinkWorker(sink_config, HttpSink(sink_config), store, Metrics())
        await agent.start()  # takes the first 4 rows; 2 wait in the store
        await wait_until(lambda: receiver.held == older[:1])
        await receiver.let_through(1)
        await wait_until(lambda: receiver.held == older[1:2])
        await wait_until(lambda: agent is not None and agent.in_memory == 3)

        newer = await store.accept(event("evt_new"), ["agent"])
        resync = asyncio.create_task(agent.resync())
        await asyncio.sleep(0)  # the resync is now waiting for its read of the store
        agent.submit(newer.deliveries)  # what Pipeline.accept does right after the commit
        await resync

        await receiver.let_through(100)
        await wait_until(lambda: len(receiver.accepted) >= 7, timeout=5)
        assert ids_of(receiver.accepted) == [*older, "evt_new"]
    finally:
        await receiver.let_through(100)
        if agent is not None:
            await agent.stop(1)
        await store.close()
        await receiver.stop()


async def test_a_redrive_is_picked_up_even_with_a_full_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dlq retry`` while the worker's window is full and more rows wait in the store: the
    redriven row still comes back, without a restart."""
    monkeypatch.setattr(delivery, "WINDOW", 4)
    receiver = GatedReceiver(secret=AGENT_SECRET, statuses=[400])
    await receiver.start()
    config = make_config(tmp_path, sinks={"agent": http_sink(receiver, concurrency=1)})
    path = tmp_path / "state" / "bridge.db"
    store = await Store.open(path)
    agent: SinkWorker | None = None
    try:

        async def accept(name: str, thread: str) -> None:
            body = {"event": "message.received", "event_id": name, "inbox_id": INBOX,
                    "thread_id": thread}  # fmt: skip
            result = await store.accept(parse_event(json.dumps(body).encode(), Origin.WEBHOOK),
                                        ["agent"])  # fmt: skip
            assert agent is not None
            agent.submit(result.deliveries)

        sink_config = config.sinks["agent"]
        agent = SinkWorker(sink_config, HttpSink(sink_config), store, Metrics())
        await agent.start()
        await accept("evt_dead", "thr_dead")
        await receiver.let_through(1)
        await wait_until(lambda: _is(store.sink_counts(), {"agent": SinkCounts(pending=0, dead=1)}))
        backlog = [f"evt_backlog_{n}" for n in range(6)]
        for name in backlog:
            await accept(name, "thr_backlog")
        await wait_until(lambda: receiver.held == backlog[:1])
        assert agent.in_memory == 4  # the window is full; two rows wait in the store

        other = await Store.open(path, exclusive=False)  # what `openmail-bridge dlq retry` does
        try:
            assert await other.dlq_retry(event_id="evt_dead") == 1
        finally:
            await other.close()
        await agent.resync()  # what the dispatcher does on noticing the other process's commit

        await receiver.let_through(100)
        await wait_until(lambda: len(receiver.accepted) >= 7, timeout=5)
        accepted = ids_of(receiver.accepted)
        assert sorted(accepted) == sorted([*backlog, "evt_dead"])
        assert [e for e in accepted if e != "evt_dead"] == backlog
    finally:
        await receiver.let_through(100)
        if agent is not None:
            await agent.stop(1)
        await store.close()
        await receiver.stop()


async def test_a_row_handed_over_before_the_first_load_does_not_skip_older_ones(
    tmp_path: Path,
) -> None:
    """A worker's intake is handed committed rows from the moment it is added, and its sink may
    take a while to start before the first load: a row taken then would move the load past older
    rows still only in the store, and no later load would read them."""
    store = await Store.open(tmp_path / "state.db")
    try:
        accepted = []
        for n in range(5):
            raw = json.dumps(
                {"event": "message.received", "event_id": f"evt_{n}", "thread_id": f"thr_{n}"}
            ).encode()
            accepted.append(await store.accept(parse_event(raw, Origin.WEBHOOK), ["s"]))
        rows = [result.deliveries[0] for result in accepted]
        intake = Intake(
            store, "s", "thread", window=3, parked=10, clock=time.time, log=structlog.get_logger()
        )
        intake.submit([rows[4]])  # committed last, handed over before the first load
        await intake.load(after_seq=0)
        assert intake.lanes.known == {row.id for row in rows[:3]}  # the oldest, in order
        assert intake.overflow  # the rest wait in the store for the next load
    finally:
        await store.close()


async def test_a_stop_ends_a_retrys_wait_with_it(tmp_path: Path, sim: Simulator) -> None:
    # A wait left sleeping after the stop would hold the stopped worker for its whole backoff.
    receiver = Receiver(statuses=[500])
    await receiver.start()
    try:
        retry = {"initial": "60s", "max": "60s"}
        config = make_config(tmp_path, sim, sinks={"agent": http_sink(receiver, retry=retry)})
        async with bridge(config, sim) as sv:
            await sim.inject(inbox_id=INBOX)
            worker = sv.dispatcher.workers["agent"]
            await wait_until(lambda: len(receiver.received) == 1)
            await wait_until(lambda: worker.retries_waiting == 1)
        assert worker.retries_waiting == 0
        assert not [t for t in asyncio.all_tasks() if "_retry_wait" in repr(t.get_coro())]
    finally:
        await receiver.stop()
