"""The OpenMail simulator against real aiohttp clients and a real webhook receiver on 127.0.0.1.

The receiver checks signatures with its own HMAC code (hashlib/hmac), not ``protocol.sign``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import WSMsgType, web

from bridge.simulator import DEMO_API_KEY, DeliveryRecord, Simulator, serve

SUPPORT, SALES = "inb_demo_support", "inb_demo_sales"
RECEIVE_TIMEOUT = 3.0
FAST_RETRIES = 0.0005  # retry_scale: 30 s, 60 s, 2 min, 4 min -> 15 ms ... 120 ms

pytestmark = pytest.mark.timeout(20)


# --- Fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Awaitable[Simulator]]]:
    async with contextlib.AsyncExitStack() as stack:

        async def make(**kwargs: object) -> Simulator:
            kwargs.setdefault("seed", 7)
            kwargs.setdefault("retry_scale", FAST_RETRIES)
            return await stack.enter_async_context(Simulator(**kwargs))  # type: ignore[arg-type]

        yield make


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    return await make_sim()


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    arrived: float

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


@dataclass
class Receiver:
    """A webhook endpoint: answers with queued statuses (then 200), optionally slowly."""

    base_url: str = ""
    hits: list[Hit] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits.append(Hit(request.path, dict(request.headers), body, time.time()))
        status = self.statuses.pop(0) if self.statuses else 200  # in arrival order
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        return web.Response(status=status)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"


def signature_ok(hit: Hit, secret: str) -> bool:
    """Independent check of OpenMail's scheme: hex HMAC-SHA256(secret, "{ts}." + raw body)."""
    timestamp = hit.headers["X-Timestamp"]
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + hit.body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), hit.headers["X-Signature"])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield rec
    finally:
        await runner.cleanup()


async def connect(
    session: aiohttp.ClientSession,
    sim: Simulator,
    *,
    key: str | None = DEMO_API_KEY,
    query: bool = False,
    **kwargs: Any,
) -> aiohttp.ClientWebSocketResponse:
    url, headers = sim.ws_url, {}
    if key is not None and query:
        url += f"?token={key}"
    elif key is not None:
        headers["Authorization"] = f"Bearer {key}"
    ws: aiohttp.ClientWebSocketResponse = await session.ws_connect(url, headers=headers, **kwargs)
    return ws


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type is WSMsgType.TEXT, msg
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


async def send(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, object]) -> None:
    await ws.send_str(json.dumps(frame))


async def closed_code(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the connection ends; no text frame may arrive first."""
    msg = await ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR), msg
    return ws.close_code


async def subscribe(ws: aiohttp.ClientWebSocketResponse, **fields: object) -> dict[str, Any]:
    await send(ws, {"type": "subscribe", **fields})
    reply = await recv(ws)
    assert reply["type"] == "subscribed", reply
    return reply


async def assert_nothing_queued(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The server answers in order, so a ``pong`` as the next frame proves nothing else was sent."""
    await send(ws, {"type": "ping"})
    assert await recv(ws) == {"type": "pong"}


def of(sim: Simulator, event_id: str, channel: str | None = None) -> list[DeliveryRecord]:
    return [
        r
        for r in sim.deliveries
        if r.event_id == event_id and (channel is None or r.channel == channel)
    ]


# --- Client messages and replies -----------------------------------------------------------------


async def test_header_auth_subscribe_ping_and_state(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        assert await subscribe(ws) == {"type": "subscribed", "inbox_ids": [], "event_types": []}
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
        [info] = sim.connections
        assert (info.auth, info.subscribed, info.messages) == ("header", True, 2)


async def test_query_token_auth(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async with await connect(session, sim, query=True) as ws:
        await subscribe(ws, inbox_ids=[SALES])
        assert [c.auth for c in sim.connections] == ["query"]


@pytest.mark.parametrize(
    ("key", "query"), [(None, False), ("om_live_wrong", False), ("om_live_wrong", True)]
)
async def test_bad_key_gets_error_then_4001(
    sim: Simulator, session: aiohttp.ClientSession, key: str | None, query: bool
) -> None:
    async with await connect(session, sim, key=key, query=query) as ws:
        assert await recv(ws) == {"type": "error", "message": "unauthorized: invalid API key"}
        assert await closed_code(ws) == 4001
    assert sim.connections == []


async def test_bad_key_http_401_mode(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(auth_failure="http")
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(session, sim, key="om_live_wrong")
    assert info.value.status == 401
    async with await connect(session, sim) as ws:  # the right key still works
        await subscribe(ws)


async def test_connection_limit_4008(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(max_connections=2)
    first, second = await connect(session, sim), await connect(session, sim)
    async with await connect(session, sim) as third:
        error = await recv(third)
        assert error["type"] == "error"
        assert "connection limit" in str(error["message"])
        assert await closed_code(third) == 4008
    assert len(sim.connections) == 2
    await first.close()
    await sim.wait_for(lambda: len(sim.connections) == 1)
    async with await connect(session, sim) as again:
        await subscribe(again)
    await second.close()


async def test_rate_limit_4029(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(rate_limit=(5, 10.0))
    async with await connect(session, sim) as ws:
        for _ in range(6):
            await send(ws, {"type": "ping"})
        assert [await recv(ws) for _ in range(5)] == [{"type": "pong"}] * 5
        error = await recv(ws)
        assert error["type"] == "error"
        assert "rate limit" in str(error["message"])
        assert await closed_code(ws) == 4029


async def test_rate_limit_window_slides(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(rate_limit=(3, 0.2))
    async with await connect(session, sim) as ws:
        for _ in range(2):
            for _ in range(3):
                await send(ws, {"type": "ping"})
            assert [await recv(ws) for _ in range(3)] == [{"type": "pong"}] * 3
            await asyncio.sleep(0.25)
        assert not ws.closed


async def test_filters_accumulate_as_two_sets(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        reply = await subscribe(ws, inbox_ids=[SUPPORT])
        assert (reply["inbox_ids"], reply["event_types"]) == ([SUPPORT], [])
        reply = await subscribe(ws, event_types=["message.received"])
        assert (reply["inbox_ids"], reply["event_types"]) == ([SUPPORT], ["message.received"])
        reply = await subscribe(ws, inbox_ids=[SALES])
        assert sorted(reply["inbox_ids"]) == sorted([SUPPORT, SALES])
        assert reply["event_types"] == ["message.received"]
        [info] = sim.connections
        assert set(info.inbox_ids) == {SUPPORT, SALES}
        assert info.event_types == ("message.received",)
        other_type = await sim.inject(sim.message_event(inbox_id=SALES, event="message.bounced"))
        sales = await sim.inject(inbox_id=SALES)
        event = await recv(ws)
        assert event["event_id"] == sales  # the filtered-out type never arrived
        assert [r.channel for r in of(sim, other_type)] == ["failed"]


async def test_inbox_filter_excludes_other_inbox(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        await subscribe(ws, inbox_ids=[SUPPORT])
        sales = await sim.inject(inbox_id=SALES)
        support = await sim.inject(inbox_id=SUPPORT)
        assert (await recv(ws))["event_id"] == support
        assert [r.channel for r in of(sim, sales)] == ["failed"]
        assert [r.channel for r in of(sim, support)] == ["websocket"]


async def test_unowned_inbox_rejects_the_whole_subscribe(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        await send(ws, {"type": "subscribe", "inbox_ids": [SUPPORT, "inb_x"]})
        assert await recv(ws) == {
            "type": "error",
            "message": "inbox inb_x is not owned by this API key",
        }
        await assert_nothing_queued(ws)  # no `subscribed`
        [info] = sim.connections
        assert (info.subscribed, info.inbox_ids) == (False, ())


async def test_unsubscribe_some_then_all(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async with await connect(session, sim) as ws:
        await subscribe(ws, inbox_ids=[SUPPORT, SALES])
        await send(ws, {"type": "unsubscribe", "inbox_ids": [SALES]})
        assert await recv(ws) == {"type": "unsubscribed", "inbox_ids": [SALES]}
        assert sim.connections[0].inbox_ids == (SUPPORT,)
        sales = await sim.inject(inbox_id=SALES)
        support = await sim.inject(inbox_id=SUPPORT)
        assert (await recv(ws))["event_id"] == support
        assert of(sim, sales)[0].channel == "failed"
        await send(ws, {"type": "unsubscribe"})
        assert await recv(ws) == {"type": "unsubscribed", "inbox_ids": []}
        assert sim.connections[0].subscribed is False
        after = await sim.inject(inbox_id=SUPPORT)
        assert [r.channel for r in of(sim, after)] == ["failed"]
        await assert_nothing_queued(ws)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"type": "bogus"}', "unknown message type: bogus"),
        ('{"type": "ack", "event_id": "evt_1"}', "unknown message type: ack"),
        ('{"no_type": 1}', "missing 'type'"),
        ('{"type": "subscribe", "inbox_ids": "inb_demo_support"}', "string lists"),
    ],
)
async def test_bad_messages_get_an_error_and_keep_the_connection(
    sim: Simulator, session: aiohttp.ClientSession, frame: str, expected: str
) -> None:
    async with await connect(session, sim) as ws:
        await ws.send_str(frame)
        error = await recv(ws)
        assert error["type"] == "error"
        assert expected in str(error["message"])
        await assert_nothing_queued(ws)


async def test_binary_frame_is_an_error(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async with await connect(session, sim) as ws:
        await ws.send_bytes(b'{"type":"ping"}')
        assert (await recv(ws))["type"] == "error"
        await assert_nothing_queued(ws)


# --- Replay --------------------------------------------------------------------------------------


async def test_replay_after_last_event_id_then_live(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    ids = [await sim.inject() for _ in range(5)]
    async with await connect(session, sim) as ws:
        await subscribe(ws, last_event_id=ids[1])
        assert [(await recv(ws))["event_id"] for _ in range(3)] == ids[2:]
        live = await sim.inject()
        assert (await recv(ws))["event_id"] == live
    replayed = [r for r in sim.deliveries if r.replay]
    assert [r.event_id for r in replayed] == ids[2:]
    assert all(r.channel == "websocket" for r in replayed)


async def test_replay_is_capped_at_100_oldest_first(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    ids = [await sim.inject() for _ in range(131)]
    async with await connect(session, sim) as ws:
        await subscribe(ws, last_event_id=ids[0])
        got = [(await recv(ws))["event_id"] for _ in range(100)]
        assert got == ids[1:101]
        await assert_nothing_queued(ws)


async def test_replay_follows_filters_and_skips_lifecycle(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    cursor = await sim.inject(inbox_id=SUPPORT)
    wanted = await sim.inject(inbox_id=SUPPORT)
    await sim.inject(inbox_id=SALES)
    await sim.inject(sim.lifecycle_event("inbox.suspended", inbox_id=SUPPORT))
    wanted_too = await sim.inject(inbox_id=SUPPORT)
    async with await connect(session, sim) as ws:
        await subscribe(ws, inbox_ids=[SUPPORT], last_event_id=cursor)
        assert [(await recv(ws))["event_id"] for _ in range(2)] == [wanted, wanted_too]
        await assert_nothing_queued(ws)


async def test_unknown_last_event_id_is_an_error_and_not_applied(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    await sim.inject()
    async with await connect(session, sim) as ws:
        await send(ws, {"type": "subscribe", "last_event_id": "evt_unknown"})
        error = await recv(ws)
        assert error["type"] == "error"
        assert "last_event_id" in str(error["message"])
        await assert_nothing_queued(ws)
        assert sim.connections[0].subscribed is False
        event_id = await sim.inject()
        assert [r.channel for r in of(sim, event_id)] == ["failed"]


async def test_subscribe_racing_injections_delivers_each_event_once_after_subscribed(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    cursor = await sim.inject()
    async with await connect(session, sim) as ws:
        await send(ws, {"type": "subscribe", "last_event_id": cursor})
        ids = [await sim.inject() for _ in range(20)]
        assert (await recv(ws))["type"] == "subscribed"
        assert [(await recv(ws))["event_id"] for _ in range(20)] == ids
        await assert_nothing_queued(ws)


# --- Keepalive -----------------------------------------------------------------------------------


async def test_server_pings_and_keeps_a_ponging_client(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(ping_interval=0.05, pong_timeout=0.5)
    async with await connect(session, sim) as ws:  # aiohttp answers pings while receiving
        # An outer timeout: aiohttp restarts receive()'s own timeout after each answered ping.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.5)
        assert len(sim.connections) == 1
        await assert_nothing_queued(ws)


async def test_no_pong_within_timeout_terminates(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(ping_interval=0.05, pong_timeout=0.1)
    async with await connect(session, sim, autoping=False) as ws:
        ping = await ws.receive(timeout=2)
        assert ping.type is WSMsgType.PING
        started = time.monotonic()
        assert await closed_code(ws) == 1006  # terminated: no close frame
        assert time.monotonic() - started < 1.0
    await sim.wait_for(lambda: sim.connections == [])


# --- Routing and webhooks ------------------------------------------------------------------------


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


async def test_inbox_webhook_overrides_account_with_its_own_secret(
    sim: Simulator, receiver: Receiver
) -> None:
    sim.set_webhook(receiver.url("account"), "account-secret")
    sim.set_webhook(receiver.url("sales"), "sales-secret", inbox_id=SALES)
    support = await sim.inject(inbox_id=SUPPORT)
    sales = await sim.inject(inbox_id=SALES)
    await sim.wait_for(lambda: len([r for r in sim.deliveries if r.channel == "webhook"]) == 2)
    by_id = {hit.json["event_id"]: hit for hit in receiver.hits}
    assert by_id[support].path == "/account"
    assert signature_ok(by_id[support], "account-secret")
    assert by_id[sales].path == "/sales"
    assert signature_ok(by_id[sales], "sales-secret")
    assert not signature_ok(by_id[sales], "account-secret")
    config = sim.webhook_config()
    assert "secret" not in json.dumps(config).replace("secret_set", "")


async def test_webhook_retry_after_500_re_signs_a_new_body(
    sim: Simulator, receiver: Receiver
) -> None:
    sim.set_webhook(receiver.url("account"), "s3cret")
    receiver.statuses = [500]
    event_id = await sim.inject()
    await sim.wait_for(lambda: any(r.status == 200 for r in of(sim, event_id)))
    first, second = receiver.hits
    assert [first.json["attempt"], second.json["attempt"]] == [1, 2]
    assert first.headers["X-Event-Id"] == second.headers["X-Event-Id"] == event_id
    assert signature_ok(first, "s3cret")
    assert signature_ok(second, "s3cret")
    assert first.body != second.body
    records = of(sim, event_id)
    assert [(r.channel, r.attempt, r.status) for r in records] == [
        ("webhook", 1, 500),
        ("webhook", 2, 200),
    ]
    assert records[0].error == "HTTP 500"
    # The second attempt waited 30 s * retry_scale after the first.
    assert second.arrived - first.arrived >= 30 * FAST_RETRIES * 0.9


async def test_webhook_timeout_counts_as_failure_and_gives_up_after_5(
    make_sim: Callable[..., Awaitable[Simulator]], receiver: Receiver
) -> None:
    sim = await make_sim(webhook_timeout=0.1)
    sim.set_webhook(receiver.url("account"), "s3cret")
    receiver.delays = [0.5]  # first attempt too slow
    receiver.statuses = [200, 503, 404, 500, 502]  # the slow 200 does not count
    event_id = await sim.inject()
    await sim.wait_for(lambda: bool(of(sim, event_id, "failed")), timeout=10)
    records = of(sim, event_id)
    assert [r.attempt for r in records] == [1, 2, 3, 4, 5, 5]
    assert records[0].status is None
    assert "no response" in (records[0].error or "")
    assert [r.status for r in records[1:5]] == [503, 404, 500, 502]
    assert (records[-1].channel, records[-1].status) == ("failed", 502)
    assert len(receiver.hits) == 5
    assert sim.pending_webhooks == 0


async def test_changed_secret_applies_to_the_next_retry(
    make_sim: Callable[..., Awaitable[Simulator]], receiver: Receiver
) -> None:
    sim = await make_sim(retry_scale=0.01)  # 0.3 s before attempt 2: time to rotate
    sim.set_webhook(receiver.url("sales"), "old-secret", inbox_id=SALES)
    receiver.statuses = [500]
    event_id = await sim.inject(inbox_id=SALES)
    await sim.wait_for(lambda: bool(of(sim, event_id, "webhook")))
    sim.set_webhook(receiver.url("sales"), "new-secret", inbox_id=SALES)
    await sim.wait_for(lambda: len(of(sim, event_id, "webhook")) == 2)
    first, second = receiver.hits
    assert signature_ok(first, "old-secret")
    assert signature_ok(second, "new-secret")
    assert not signature_ok(second, "old-secret")


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


# --- Knobs: disconnect, refuse, key rotation, stop -----------------------------------------------


@pytest.mark.parametrize(("code", "error"), [(1001, False), (4029, True)])
async def test_disconnect_with_code(
    sim: Simulator, session: aiohttp.ClientSession, code: int, error: bool
) -> None:
    async with await connect(session, sim) as a, await connect(session, sim) as b:
        await subscribe(a)
        await subscribe(b)
        assert await sim.disconnect(code) == 2
        for ws in (a, b):
            if error:
                assert (await recv(ws))["type"] == "error"
            assert await closed_code(ws) == code
    await sim.wait_for(lambda: sim.connections == [])


async def test_disconnect_abrupt_is_1006(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async with await connect(session, sim) as ws:
        await subscribe(ws)
        assert await sim.disconnect(abrupt=True) == 1
        msg = await ws.receive(timeout=2)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)  # no close frame
        assert ws.close_code == 1006
    assert await sim.disconnect() == 0


async def test_refuse_close_then_http_then_recover(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as open_ws:
        await subscribe(open_ws)
        sim.refuse(5)
        async with await connect(session, sim) as ws:
            assert await closed_code(ws) == 1001
        sim.refuse(5, code=4008)
        async with await connect(session, sim) as ws:
            assert (await recv(ws))["type"] == "error"
            assert await closed_code(ws) == 4008
        sim.refuse(0.2, mode="http")
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await connect(session, sim)
        assert info.value.status == 503
        await asyncio.sleep(0.25)
        async with await connect(session, sim) as ws:
            await subscribe(ws)
        await assert_nothing_queued(open_ws)  # refusal left the open connection alone


async def test_rotate_api_key_closes_old_connections_4001(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        await subscribe(ws)
        sim.rotate_api_key("om_test_rotated")
        error = await recv(ws)
        assert error["type"] == "error"
        assert "unauthorized" in str(error["message"])
        assert await closed_code(ws) == 4001
    async with await connect(session, sim) as old:
        assert (await recv(old))["type"] == "error"
        assert await closed_code(old) == 4001
    async with await connect(session, sim, key="om_test_rotated") as new:
        await subscribe(new)


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


# --- Generated events ----------------------------------------------------------------------------


def test_message_event_shape(sim: Simulator) -> None:
    event = sim.message_event(inbox_id=SUPPORT)
    assert event["event"] == "message.received"
    assert str(event["event_id"]).startswith("evt_")
    assert str(event["thread_id"]).startswith("thr_")
    assert event["inbox_id"] == SUPPORT
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(event["occurred_at"]))
    message = event["message"]
    assert isinstance(message, dict)
    assert str(message["id"]).startswith("msg_")
    assert re.fullmatch(r"<[^<>@]+@[^<>]+>", message["rfc_message_id"])
    assert re.fullmatch(r"[A-Z][\w. ]+ <[^@ ]+@example\.(com|org|net)>", message["from"])
    assert message["to"] == "demo.support@sim.openmail.sh"
    assert isinstance(message["cc"], list)
    assert message["subject"]
    assert message["body_text"]
    assert "body_html" not in message


def test_attachments_use_camel_case_and_extraction_fields(sim: Simulator) -> None:
    attachments = [
        att
        for _ in range(60)
        for att in sim.message_event()["message"]["attachments"]  # type: ignore[index]
    ]
    assert attachments
    methods = {att["extractionMethod"] for att in attachments}
    assert methods & {"pdf", "ocr", "office", "csv", "text"}
    assert methods & {"unsupported", "skipped_too_large"}
    for att in attachments:
        assert set(att) <= {
            "filename",
            "contentType",
            "sizeBytes",
            "url",
            "parsedText",
            "extractionMethod",
        }
        assert isinstance(att["sizeBytes"], int)
        assert att["url"].endswith("/" + att["filename"])
        failed = att["extractionMethod"] in {"unsupported", "pdf_error", "skipped_too_large"}
        assert ("parsedText" in att) is not failed


def test_known_thread_gets_a_reply_and_seed_reproduces_content(sim: Simulator) -> None:
    first = sim.message_event(inbox_id=SALES)
    reply = sim.message_event(inbox_id=SALES, thread_id=str(first["thread_id"]))
    assert reply["thread_id"] == first["thread_id"]
    assert reply["message"]["subject"].startswith("Re: ")  # type: ignore[index]
    assert reply["message"]["from"] == first["message"]["from"]  # type: ignore[index]
    a, b = Simulator(seed=3), Simulator(seed=3)
    subjects = [[s.message_event()["message"]["subject"] for _ in range(5)] for s in (a, b)]  # type: ignore[index]
    assert subjects[0] == subjects[1]
    assert a.message_event()["event_id"] != b.message_event()["event_id"]


def test_lifecycle_event_defaults(sim: Simulator) -> None:
    pod = sim.lifecycle_event("pod.suspended")
    assert (pod["inbox_id"], pod["inbox_address"], pod["reason"]) == (
        None,
        None,
        "high_bounce_rate",
    )
    inbox = sim.lifecycle_event("inbox.reactivated")
    assert (inbox["inbox_id"], inbox["reason"]) == (SUPPORT, None)
    with pytest.raises(ValueError, match="unknown lifecycle event"):
        sim.lifecycle_event("message.received")


def test_constructor_rejects_inconsistent_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        Simulator(webhook_url="http://127.0.0.1:9/hook")
    with pytest.raises(ValueError, match="inboxes"):
        Simulator(inboxes=["support"])
    with pytest.raises(ValueError, match="rate_limit"):
        Simulator(rate_limit=(0, 1.0))


# --- Control API ---------------------------------------------------------------------------------


async def test_control_api_round_trip(
    sim: Simulator, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    base = sim.base_url
    async with await connect(session, sim) as ws:
        await subscribe(ws, inbox_ids=[SALES])
        async with session.post(f"{base}/_sim/events", json={"count": 2, "inbox_id": SALES}) as r:
            assert r.status == 200
            ids = (await r.json())["event_ids"]
        assert [(await recv(ws))["event_id"] for _ in range(2)] == ids

        async with session.get(f"{base}/_sim/state") as r:
            state = await r.json()
        assert state["connections"][0]["inbox_ids"] == [SALES]
        assert state["connections"][0]["subscribed"] is True
        assert state["events"] == 2

        hook = {"url": receiver.url("sales"), "secret": "shh-sales", "inbox_id": SALES}
        async with session.post(f"{base}/_sim/webhook", json=hook) as r:
            assert r.status == 200
            text = await r.text()
        assert "shh-sales" not in text
        assert json.loads(text)["inboxes"][SALES]["url"] == receiver.url("sales")

        body = {"event": "inbox.suspended", "inbox_id": SALES, "reason": "abuse"}
        async with session.post(f"{base}/_sim/events", json=body) as r:
            [lifecycle] = (await r.json())["event_ids"]
        await sim.wait_for(lambda: bool(of(sim, lifecycle, "webhook")))
        assert receiver.hits[-1].json["reason"] == "abuse"
        assert signature_ok(receiver.hits[-1], "shh-sales")

        payload = {"event": "message.received", "event_id": "evt_custom1", "inbox_id": SALES}
        async with session.post(f"{base}/_sim/events", json={"payload": payload}) as r:
            assert (await r.json())["event_ids"] == ["evt_custom1"]
        assert (await recv(ws))["event_id"] == "evt_custom1"

        async with session.get(f"{base}/_sim/deliveries", params={"event_id": ids[0]}) as r:
            records = await r.json()
        assert [(d["channel"], d["event_id"]) for d in records] == [("websocket", ids[0])]
        async with session.get(f"{base}/_sim/events") as r:
            history = await r.json()
        assert [e["event_id"] for e in history] == [*ids, lifecycle, "evt_custom1"]

        async with session.get(f"{base}/_sim/state") as r:
            state_text = await r.text()
        assert "shh-sales" not in state_text

        async with session.post(f"{base}/_sim/disconnect", json={"code": 4001}) as r:
            assert await r.json() == {"closed": 1}
        assert (await recv(ws))["type"] == "error"
        assert await closed_code(ws) == 4001


async def test_control_api_refuse(sim: Simulator, session: aiohttp.ClientSession) -> None:
    body = {"seconds": 5, "mode": "http", "code": 502}
    async with session.post(f"{sim.base_url}/_sim/refuse", json=body) as r:
        assert (await r.json())["refusing"] is True
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await connect(session, sim)
    assert info.value.status == 502
    async with session.post(f"{sim.base_url}/_sim/refuse", json={"seconds": 0}) as r:
        assert (await r.json())["refusing"] is False
    async with await connect(session, sim) as ws:
        await subscribe(ws)


async def test_control_api_abrupt_disconnect(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim) as ws:
        async with session.post(f"{sim.base_url}/_sim/disconnect", json={"abrupt": True}) as r:
            assert await r.json() == {"closed": 1}
        await ws.receive(timeout=2)
        assert ws.close_code == 1006


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/_sim/events", "{not json", "not JSON"),
        ("/_sim/events", "[]", "JSON object"),
        ("/_sim/events", {"count": 0}, "count"),
        ("/_sim/events", {"count": "3"}, "count"),
        ("/_sim/events", {"colour": "red"}, "unknown field(s) colour"),
        ("/_sim/events", {"event": "message.deleted"}, "event: unknown type"),
        ("/_sim/events", {"inbox_id": "inb_other"}, "inbox_id"),
        ("/_sim/events", {"payload": {"event_id": "e"}, "inbox_id": SALES}, "payload"),
        ("/_sim/events", {"payload": "x"}, "payload"),
        ("/_sim/disconnect", {"code": 1006}, "code"),
        ("/_sim/disconnect", {"abrupt": "yes"}, "abrupt"),
        ("/_sim/refuse", {}, "seconds: required"),
        ("/_sim/refuse", {"seconds": 1, "mode": "drop"}, "mode"),
        ("/_sim/refuse", {"seconds": 1, "mode": "http", "code": 200}, "4xx or 5xx"),
        ("/_sim/webhook", {"url": "http://127.0.0.1:9/h"}, "secret"),
        ("/_sim/webhook", {"url": "ftp://x", "secret": "s"}, "http(s)"),
        ("/_sim/webhook", {"url": None, "secret": None, "inbox_id": "inb_x"}, "inb_x"),
    ],
)
async def test_control_api_rejects_bad_input(
    sim: Simulator,
    session: aiohttp.ClientSession,
    path: str,
    body: object,
    fragment: str,
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    async with session.post(sim.base_url + path, data=data) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert fragment in error
    assert sim.events == []


# --- Logs and the CLI entry point ----------------------------------------------------------------


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


async def test_serve_prints_banner_and_stops(
    capsys: pytest.CaptureFixture[str], session: aiohttp.ClientSession
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            host="127.0.0.1",
            port=0,
            api_key=None,
            webhook_url=None,
            webhook_secret=None,
            stop=stop,
        )
    )
    out = ""
    for _ in range(200):
        out += capsys.readouterr().out
        if "/_sim/state" in out:
            break
        await asyncio.sleep(0.01)
    match = re.search(r"(ws://127\.0\.0\.1:\d+/v1/ws)", out)
    assert match, out
    assert DEMO_API_KEY in out
    assert "demo key" in out
    assert "/_sim/events" in out
    ws = await session.ws_connect(
        match.group(1), headers={"Authorization": f"Bearer {DEMO_API_KEY}"}
    )
    await subscribe(ws)
    closed = asyncio.create_task(closed_code(ws))
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await closed == 1001
    await ws.close()


async def test_serve_requires_url_and_secret_together() -> None:
    with pytest.raises(ValueError, match="together"):
        await serve(
            host="127.0.0.1",
            port=0,
            api_key=None,
            webhook_url="http://127.0.0.1:9/h",
            webhook_secret=None,
            stop=asyncio.Event(),
        )
