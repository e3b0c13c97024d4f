"""A connection that goes away while its on-connect hooks run (the stream check waiting on a
server that is stopping) never counts as usable: it is reported disconnected, not connected, and
``connections`` counts only the connection that did become usable afterwards.

The server is a real nats-server, stopped from an on-connect hook of the test's own: the hook
returns only once the bridge has seen the connection go, as a stream check waiting out its
timeout would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from bridge.metrics import Metrics
from bridge.nats.connection import ConnectionState, NatsConnection
from tests.conftest import make_config, wait_until

from .conftest import NatsServer, nats_section


@pytest.fixture
async def connection(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[NatsConnection]:
    config = make_config(tmp_path, nats=nats_section(nats_server))
    assert config.nats is not None
    conn = NatsConnection(config.nats, Metrics())
    try:
        yield conn
    finally:
        await conn.stop()


def gauge(conn: NatsConnection) -> float | None:
    return conn.metrics.registry.get_sample_value("openmail_bridge_nats_connected")


async def gone(conn: NatsConnection) -> None:
    """Until the bridge has seen the connection go: the disconnected callback, or a failed
    attempt to connect again, reports it."""
    await wait_until(lambda: conn.state is ConnectionState.DISCONNECTED, 10)


async def test_a_connection_lost_during_the_hooks_is_disconnected_not_connected(
    connection: NatsConnection, nats_server: NatsServer
) -> None:
    hook_returned = asyncio.Event()
    calls = 0

    async def server_goes_away(_: JetStreamContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.to_thread(nats_server.stop)
            await gone(connection)
            hook_returned.set()

    connection.on_connect(server_goes_away)
    await connection.start()
    await hook_returned.wait()
    # The rest of the connect callback runs in the same step as the hook's return: what it
    # decided is visible here.
    assert connection.state is ConnectionState.DISCONNECTED
    assert not connection.connected
    assert connection.jetstream() is None
    assert connection.connections == 0
    assert gauge(connection) == 0.0
    assert connection.describe_failure().startswith("NATS is disconnected")
    assert connection.status()["state"] == "disconnected"

    nats_server.start()  # same port: the client's reconnection finds it
    await wait_until(lambda: connection.state is ConnectionState.CONNECTED, 10)
    assert connection.connected
    assert connection.connections == 1
    assert gauge(connection) == 1.0
    assert calls == 2  # the hooks ran again for the connection that became usable


async def test_a_connection_back_before_the_hooks_end_is_counted_once(
    connection: NatsConnection, nats_server: NatsServer
) -> None:
    hook_returned = asyncio.Event()
    calls = 0

    async def server_goes_and_comes_back(_: JetStreamContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.to_thread(nats_server.stop)
            await gone(connection)
            await asyncio.to_thread(nats_server.start)
            # The reconnection ran the hooks again (this call returns at once) and is usable.
            await wait_until(lambda: connection.state is ConnectionState.CONNECTED, 10)
            hook_returned.set()

    connection.on_connect(server_goes_and_comes_back)
    await connection.start()
    await hook_returned.wait()
    assert calls == 2
    assert connection.state is ConnectionState.CONNECTED
    assert connection.connections == 1
    assert connection.reconnects == 1
    # Who waits for the connection after the first one counts it as it happened.
    async with asyncio.timeout(5):
        await connection.connected_after(0)
    assert connection.jetstream() is not None
