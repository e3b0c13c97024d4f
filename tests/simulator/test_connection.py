"""One simulated WebSocket connection: subscribe filters, client messages and their errors, replay
after ``last_event_id``, and the server's keepalive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType

from bridge.simulator import Simulator

from .conftest import (
    SALES,
    SUPPORT,
    assert_nothing_queued,
    closed_code,
    connect,
    of,
    recv,
    send,
    subscribe,
)

pytestmark = pytest.mark.timeout(20)


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
