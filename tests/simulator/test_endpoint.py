"""The simulator's ``/v1/ws`` endpoint: authentication, the connection and rate limits, refusal
windows, closing every connection and key rotation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import WSMsgType

from bridge.simulator import Simulator

from .conftest import (
    SALES,
    FakeClock,
    assert_nothing_queued,
    closed_code,
    connect,
    recv,
    send,
    subscribe,
)

pytestmark = pytest.mark.timeout(20)


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
async def test_bad_key_gets_error_then_4001_after_its_first_frame(
    sim: Simulator, session: aiohttp.ClientSession, key: str | None, query: bool
) -> None:
    async with await connect(session, sim, key=key, query=query) as ws:
        await send(ws, {"type": "subscribe"})
        assert await recv(ws) == {"type": "error", "message": "unauthorized: invalid API key"}
        assert await closed_code(ws) == 4001
    assert sim.connections == []
    [rejection] = sim.rejections
    assert (rejection.reason, rejection.code, rejection.trigger) == (
        "unauthorized",
        4001,
        "first_frame",
    )


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
        await send(third, {"type": "subscribe"})
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
    clock = FakeClock()
    sim = await make_sim(rate_limit=(3, 0.2), clock=clock)
    async with await connect(session, sim) as ws:
        for _ in range(2):
            for _ in range(3):
                await send(ws, {"type": "ping"})
            assert [await recv(ws) for _ in range(3)] == [{"type": "pong"}] * 3
            clock.advance(0.25)
        assert not ws.closed


async def test_binary_frame_is_an_error(sim: Simulator, session: aiohttp.ClientSession) -> None:
    async with await connect(session, sim) as ws:
        await ws.send_bytes(b'{"type":"ping"}')
        assert (await recv(ws))["type"] == "error"
        await assert_nothing_queued(ws)


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
    make_sim: Callable[..., Awaitable[Simulator]], session: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    sim = await make_sim(clock=clock)
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
        clock.advance(0.25)
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
        await send(old, {"type": "subscribe"})
        assert (await recv(old))["type"] == "error"
        assert await closed_code(old) == 4001
    async with await connect(session, sim, key="om_test_rotated") as new:
        await subscribe(new)
