"""The WebSocket source's ``on_rejected``: the owner of a source (``listen``) is asked once per new
rejection no retry mends, and a source whose owner stops over it promises no retry and names no
config key; one whose owner declines (the daemon has none) retries at the cap as before."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from conftest import RecordingSpool, events_named, make_config, wait_until
from sources.test_websocket import Sleeps, account_connection_taken

from bridge.backoff import ReconnectPolicy
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.simulator import Simulator
from bridge.sources.websocket import WebSocketSource
from bridge.sources.ws_session import Disconnect, DisconnectKind

FAST = {"websocket": {"reconnect": {"initial": "50ms", "max": "1s"}}}


@contextlib.asynccontextmanager
async def source_owned_by(
    config: Config, sleeps: Sleeps, answer: bool, asked: list[Disconnect]
) -> AsyncIterator[WebSocketSource]:
    def on_rejected(cause: Disconnect) -> bool:
        asked.append(cause)
        return answer

    policy = ReconnectPolicy(config.openmail.websocket.reconnect, sleep=sleeps)
    source = WebSocketSource(config.openmail, Metrics(), policy=policy)
    source.on_rejected = on_rejected
    await source.start(RecordingSpool())
    try:
        yield source
    finally:
        await source.stop()


async def test_an_owner_that_stops_is_asked_once_and_no_retry_is_promised(tmp_path: Path) -> None:
    sim = Simulator(api_key="om_test_someone_else_0000")
    await sim.start()
    asked: list[Disconnect] = []
    try:
        config = make_config(tmp_path, sim, openmail=FAST)
        with structlog.testing.capture_logs() as logs:
            async with source_owned_by(config, Sleeps(1), True, asked) as source:
                await wait_until(lambda: bool(asked))
                assert source.state == "down"
                assert source.status()["reason"] == "the API key was rejected"
    finally:
        await sim.stop()
    ((kind, code),) = [(c.kind, c.code) for c in asked]
    assert (kind, code) == (DisconnectKind.KEY_REJECTED, 4001)
    (line,) = events_named(logs, "ws.rejected")
    assert line["log_level"] == "info"  # the owner says it, once, in its own words
    assert line["owner_stops"] is True
    assert "hint" not in line
    assert events_named(logs, "ws.retrying") == []


async def test_an_owner_that_declines_leaves_the_retry_at_the_cap(tmp_path: Path) -> None:
    asked: list[Disconnect] = []
    sleeps = Sleeps(3)
    async with account_connection_taken() as sim:
        config = make_config(tmp_path, sim, openmail=FAST)
        with structlog.testing.capture_logs() as logs:
            async with source_owned_by(config, sleeps, False, asked):
                await asyncio.wait_for(sleeps.enough.wait(), timeout=10)
    assert [c.kind for c in asked] == [DisconnectKind.TOO_MANY_CONNECTIONS]  # once, not per try
    assert all(0.8 <= delay <= 1.0 for delay in sleeps.asked), sleeps.asked  # at the cap
    (error,) = events_named(logs, "ws.rejected")
    assert (error["log_level"], error["cause"]) == ("error", "too_many_connections")
    assert "close other clients" in error["hint"]
    assert len(events_named(logs, "ws.retrying")) == 2
