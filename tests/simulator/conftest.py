"""Fixtures and helpers for the simulator's tests: real aiohttp clients, a real webhook receiver
on 127.0.0.1, and a clock the tests move by hand.

The receiver checks signatures with its own HMAC code (hashlib/hmac), not ``protocol.sign``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from bridge.simulator import DEMO_API_KEY, DeliveryRecord, Simulator

SUPPORT, SALES = "inb_demo_support", "inb_demo_sales"
RECEIVE_TIMEOUT = 3.0
FAST_RETRIES = 0.0005  # retry_scale: 30 s, 60 s, 2 min, 4 min -> 15 ms ... 120 ms


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
class FakeClock:
    """Monotonic seconds that move only when a test says so (``Simulator(clock=...)``)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Receiver:
    """A webhook endpoint: answers with queued statuses (then 200). The first ``stall`` requests
    get no answer until the receiver is shut down: a sender's timeout is what ends them."""

    base_url: str = ""
    hits: list[Hit] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    stall: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.hits.append(Hit(request.path, dict(request.headers), body, time.time()))
        status = self.statuses.pop(0) if self.statuses else 200  # in arrival order
        if self.stall:
            self.stall -= 1
            await self.released.wait()
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
        rec.released.set()  # stalled handlers answer now rather than hold the cleanup
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
