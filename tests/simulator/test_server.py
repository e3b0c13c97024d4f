"""The :class:`Simulator` itself: routing of each event (WebSocket fan-out, else webhook, else
failed), its constructor checks, ``stop()``, and what it logs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import structlog

from bridge.simulator import Simulator

from .conftest import (
    SALES,
    SUPPORT,
    Receiver,
    assert_nothing_queued,
    closed_code,
    connect,
    of,
    recv,
    send,
    signature_ok,
    subscribe,
)

pytestmark = pytest.mark.timeout(20)


async def test_fan_out_to_every_matching_connection(
    sim: Simulator, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.set_webhook(receiver.url("account"), "s3cret")
    async with await connect(session, sim) as a, await connect(session, sim) as b:
        await subscribe(a)
        await subscribe(b, inbox_ids=[SUPPORT])
        event_id = await sim.inject(inbox_id=SUPPORT)
        frame_a, frame_b = await recv(a), await recv(b)
        assert frame_a["event_id"] == frame_b["event_id"] == event_id
        assert frame_a["attempt"] == 1
        assert isinstance(frame_a["delivered_at"], str)
        records = of(sim, event_id)
        assert {r.channel for r in records} == {"websocket"}
        assert sorted(r.connection_id or 0 for r in records) == sorted(
            c.id for c in sim.connections
        )
    assert receiver.hits == []


async def test_connected_but_unsubscribed_falls_back_to_signed_webhook(
    sim: Simulator, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim.set_webhook(receiver.url("account"), "s3cret")
    async with await connect(session, sim) as ws:
        event_id = await sim.inject(inbox_id=SALES)
        await sim.wait_for(lambda: bool(of(sim, event_id, "webhook")))
        await assert_nothing_queued(ws)
    [hit] = receiver.hits
    assert signature_ok(hit, "s3cret")
    assert not signature_ok(hit, "other")
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Event-Id"] == event_id == hit.json["event_id"]
    assert abs(int(hit.headers["X-Timestamp"]) - time.time()) < 5
    assert hit.json["attempt"] == 1
    assert hit.json["inbox_id"] == SALES
    [record] = of(sim, event_id)
    assert (record.channel, record.attempt, record.status, record.error) == (
        "webhook",
        1,
        200,
        None,
    )


async def test_no_route_is_recorded_failed(sim: Simulator) -> None:
    event_id = await sim.inject()
    [record] = of(sim, event_id)
    assert (record.channel, record.attempt) == ("failed", 0)
    assert "no webhook" in (record.error or "")
    assert sim.events[-1]["event_id"] == event_id


async def test_odd_payloads_route_without_crashing(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        await subscribe(ws, inbox_ids=[SUPPORT], event_types=["message.received"])
        odd = await sim.inject({"event": ["x"], "inbox_id": {"a": 1}})
        assert [r.channel for r in of(sim, odd)] == ["failed"]
        assert odd.startswith("evt_")  # an id was assigned
        with pytest.raises(ValueError, match="JSON"):
            await sim.inject({"event": "message.received", "when": object()})
        await assert_nothing_queued(ws)


async def test_lifecycle_events_are_webhook_only(
    sim: Simulator, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    async with await connect(session, sim) as ws:
        await subscribe(ws)  # all inboxes, all types
        no_webhook = await sim.inject(sim.lifecycle_event("pod.suspended"))
        assert [r.channel for r in of(sim, no_webhook)] == ["failed"]
        sim.set_webhook(receiver.url("account"), "s3cret")
        event_id = await sim.inject(sim.lifecycle_event("inbox.reactivated", inbox_id=SALES))
        await sim.wait_for(lambda: bool(of(sim, event_id, "webhook")))
        await assert_nothing_queued(ws)
    [hit] = receiver.hits
    body = hit.json
    assert signature_ok(hit, "s3cret")
    assert (body["event"], body["inbox_id"], body["reason"]) == ("inbox.reactivated", SALES, None)
    assert body["inbox_address"] == "demo.sales@sim.openmail.sh"
    assert "message" not in body
    assert "thread_id" not in body


async def test_stop_closes_1001_and_cancels_pending_retries(
    session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    sim = Simulator(retry_scale=1.0)  # real 30 s retry delay: must be cancelled, not awaited
    await sim.start()
    try:
        sim.set_webhook(receiver.url("account"), "s3cret")
        receiver.statuses = [500]
        ws = await connect(session, sim)
        closed = asyncio.create_task(closed_code(ws))  # a reading client answers the close
        event_id = await sim.inject()
        await sim.wait_for(lambda: bool(of(sim, event_id, "webhook")))
        assert sim.pending_webhooks == 1
    finally:
        started = time.monotonic()
        await sim.stop()
    assert time.monotonic() - started < 1.5  # neither the 30 s retry nor the 2 s close grace
    assert await closed == 1001
    await ws.close()
    assert sim.pending_webhooks == 0
    assert len(receiver.hits) == 1


def test_constructor_rejects_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        Simulator(webhook_url="http://127.0.0.1:9/hook")
    with pytest.raises(ValueError, match="inboxes"):
        Simulator(inboxes=["support"])
    with pytest.raises(ValueError, match="rate_limit"):
        Simulator(rate_limit=(0, 1.0))


async def test_logs_never_contain_the_key_or_secrets(
    make_sim: Callable[..., Awaitable[Simulator]],
    session: aiohttp.ClientSession,
    receiver: Receiver,
) -> None:
    key, secret = "om_test_sensitive_key_123", "sensitive-secret-456"
    with structlog.testing.capture_logs() as logs:
        sim = await make_sim(api_key=key, webhook_url=receiver.url("a"), webhook_secret=secret)
        async with await connect(session, sim, key=key, query=True) as ws:
            await subscribe(ws)
        async with await connect(session, sim, key="om_live_wrong") as bad:
            await send(bad, {"type": "ping"})
            await recv(bad)
            await closed_code(bad)
        await sim.wait_for(lambda: sim.connections == [])
        event_id = await sim.inject()
        await sim.wait_for(lambda: bool(of(sim, event_id, "webhook")))
    names = {entry["event"] for entry in logs}
    assert {"sim.ws.connected", "sim.ws.rejected", "sim.webhook.delivered"} <= names
    dumped = repr(logs)
    assert key not in dumped
    assert secret not in dumped
