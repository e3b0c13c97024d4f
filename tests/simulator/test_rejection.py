"""How the simulator turns a WebSocket away (a bad key, a connection over the limit), checked with a
client that behaves as OpenMail's agent plugin does: it sends ``subscribe`` the moment the socket
opens and treats 4001/4003/4008 as fatal only when the close comes while it reads, after that
frame; a close that beats its ``subscribe`` looks like network trouble and is retried."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import websockets
from aiohttp import WSMsgType
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.simulator import DEMO_API_KEY, Simulator

from .conftest import RECEIVE_TIMEOUT, closed_code, connect, recv, send

pytestmark = pytest.mark.timeout(30)

WRONG_KEY = "om_test_not_the_key_0000"
FATAL = frozenset({4001, 4003, 4008})


async def plugin_attempt(url: str, key: str) -> str:
    """One connection as the plugin makes it: ``fatal:<code>`` for a close that came while it
    read after its ``subscribe``; ``retry:...`` when it would take the failure for the network;
    ``http:<status>`` for a refused upgrade."""
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with websockets.connect(url, additional_headers=headers, ping_interval=None) as ws:
            try:
                await ws.send(
                    json.dumps({"type": "subscribe", "event_types": ["message.received"]})
                )
            except ConnectionClosed:
                return "retry:closed_before_subscribe"
            try:
                async with asyncio.timeout(RECEIVE_TIMEOUT):
                    async for _ in ws:
                        pass
            except ConnectionClosed:
                pass
            code = ws.close_code
            return f"fatal:{code}" if code in FATAL else f"retry:{code}"
    except InvalidStatus as exc:
        return f"http:{exc.response.status_code}"


async def test_a_bad_key_is_fatal_for_the_plugin_20_times_in_20(
    make_sim: Callable[..., Awaitable[Simulator]],
) -> None:
    sim = await make_sim()
    outcomes = [await plugin_attempt(sim.ws_url, WRONG_KEY) for _ in range(20)]
    assert outcomes == ["fatal:4001"] * 20
    assert [(r.code, r.trigger) for r in sim.rejections] == [(4001, "first_frame")] * 20


async def test_over_the_limit_is_fatal_for_the_plugin_after_its_subscribe(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(max_connections=1)
    async with await connect(session, sim):  # holds the account's only connection
        await sim.wait_for(lambda: len(sim.connections) == 1)
        outcomes = [await plugin_attempt(sim.ws_url, DEMO_API_KEY) for _ in range(5)]
    assert outcomes == ["fatal:4008"] * 5
    assert {(r.reason, r.code, r.trigger) for r in sim.rejections} == {
        ("connection_limit", 4008, "first_frame")
    }


@pytest.mark.parametrize(("reason", "code"), [("unauthorized", 4001), ("connection_limit", 4008)])
async def test_a_silent_client_is_closed_after_the_delay(
    make_sim: Callable[..., Awaitable[Simulator]],
    session: aiohttp.ClientSession,
    reason: str,
    code: int,
) -> None:
    sim = await make_sim(reject_silence=0.3, max_connections=1)
    async with await connect(session, sim):
        key = WRONG_KEY if reason == "unauthorized" else DEMO_API_KEY
        loop = asyncio.get_running_loop()
        opened = loop.time()
        async with await connect(session, sim, key=key) as ws:
            assert (await recv(ws))["type"] == "error"
            assert await closed_code(ws) == code
        assert loop.time() - opened >= 0.3  # not at once: the client had its chance to speak
    [rejection] = sim.rejections
    assert (rejection.reason, rejection.code, rejection.trigger) == (reason, code, "silence")


async def test_no_silence_allowed_closes_at_once(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim(reject_silence=0)
    async with await connect(session, sim, key=WRONG_KEY) as ws:
        assert (await recv(ws))["type"] == "error"
        assert await closed_code(ws) == 4001
    assert [(r.code, r.trigger) for r in sim.rejections] == [(4001, "silence")]


async def test_a_ping_is_answered_and_does_not_count_as_the_first_frame(
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    async with await connect(session, sim, key=WRONG_KEY, autoping=False) as ws:
        await ws.ping(b"hello")
        pong = await ws.receive(timeout=RECEIVE_TIMEOUT)
        assert (pong.type, pong.data) == (WSMsgType.PONG, b"hello")
        assert sim.rejections == []
        await send(ws, {"type": "subscribe"})
        assert (await recv(ws))["type"] == "error"
        assert await closed_code(ws) == 4001
    assert [r.trigger for r in sim.rejections] == ["first_frame"]


@pytest.mark.parametrize(
    ("max_connections", "key", "status"), [(10, WRONG_KEY, 401), (1, DEMO_API_KEY, 429)]
)
async def test_reject_on_upgrade_answers_with_http(
    make_sim: Callable[..., Awaitable[Simulator]],
    session: aiohttp.ClientSession,
    max_connections: int,
    key: str,
    status: int,
) -> None:
    sim = await make_sim(auth_failure="http", max_connections=max_connections)
    async with await connect(session, sim) as holder:
        assert await plugin_attempt(sim.ws_url, key) == f"http:{status}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await connect(session, sim, key=key)
        assert refused.value.status == status
        assert not holder.closed
    assert [(r.code, r.trigger) for r in sim.rejections] == [(status, "upgrade")] * 2


async def test_an_abrupt_disconnect_also_cuts_a_connection_awaiting_rejection(
    sim: Simulator, session: aiohttp.ClientSession
) -> None:
    async with await connect(session, sim, key=WRONG_KEY) as ws:
        await sim.wait_for(lambda: sim.pending_rejections == 1)
        assert await sim.disconnect(abrupt=True) == 0  # never one of the account's connections
        msg = await ws.receive(timeout=RECEIVE_TIMEOUT)
        assert msg.type in (WSMsgType.CLOSED, WSMsgType.ERROR)
        assert ws.close_code == 1006
    assert sim.rejections == []


def test_reject_silence_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="reject_silence"):
        Simulator(reject_silence=-1)
