"""Pings find a silent partition: ``nats.ping_interval`` (with its key-path errors) reaches the
client, and a connection that stops carrying bytes without closing is replaced within a few
intervals."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bridge.config import NatsConfig
from bridge.nats.connection import ConnectionState
from bridge.nats.options import MAX_OUTSTANDING_PINGS, connect_options
from tests.conftest import make_config, wait_until

from .conftest import LoopbackRelay, NatsServer, bound_bus, delivery, nats_section
from .test_config import base, load, problems


class SilentProxy(LoopbackRelay):
    """A TCP relay to a server whose open connections can go silent: their bytes stop flowing
    both ways and nothing closes them, while a new connection gets through (a NAT or firewall
    entry dropped: the old flow is dead, a new one works)."""

    def __init__(self, target: int) -> None:
        super().__init__(target)
        self._flows: list[asyncio.Event] = []

    def silence_open_connections(self) -> None:
        for flowing in self._flows:
            flowing.clear()

    def connected(self) -> asyncio.Event:
        flowing = asyncio.Event()
        flowing.set()
        self._flows.append(flowing)
        return flowing

    async def pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
        shared: Any,
    ) -> None:
        while data := await reader.read(65536):
            if not shared.is_set():
                await asyncio.Event().wait()  # held for good: silent, never closed
            writer.write(data)
            await writer.drain()


@contextlib.asynccontextmanager
async def silent_proxy(server: NatsServer) -> AsyncIterator[SilentProxy]:
    proxy = SilentProxy(server.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def test_ping_interval_defaults_to_20s_and_is_checked_with_its_key_path(tmp_path: Path) -> None:
    config = load(tmp_path, base())
    assert isinstance(config.nats, NatsConfig)
    assert config.nats.ping_interval == 20.0
    assert load(tmp_path, base(nats={"ping_interval": "250ms"})).nats == NatsConfig(
        servers=("nats://127.0.0.1:4222",), ping_interval=0.25
    )
    assert "nats.ping_interval: must be more than 0s" in problems(
        tmp_path, base(nats={"ping_interval": "0s"})
    )
    [bad] = problems(tmp_path, base(nats={"ping_interval": "often"}))
    assert bad.startswith("nats.ping_interval: ")


def test_the_ping_interval_and_outstanding_pings_go_to_the_client(tmp_path: Path) -> None:
    config = load(tmp_path, base(nats={"ping_interval": "250ms"}))
    assert config.nats is not None
    options = connect_options(config.nats)
    assert options["ping_interval"] == 0.25
    assert options["max_outstanding_pings"] == MAX_OUTSTANDING_PINGS == 3
    default = load(tmp_path, base()).nats
    assert default is not None
    assert connect_options(default)["ping_interval"] == 20.0


async def test_a_silently_dead_connection_is_replaced_within_seconds(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with silent_proxy(nats_server) as proxy:
        section = nats_section(nats_server, servers=[proxy.url], ping_interval="200ms")
        config = make_config(
            tmp_path, nats=section, sinks={"bus": {"type": "nats", "timeout": "1s"}}
        )
        bus, sink = await bound_bus(config)
        try:
            await bus.connection.wait_connected()
            client: Any = bus.connection._client
            assert client.options["ping_interval"] == 0.2
            await sink.send(delivery("evt_before"))
            proxy.silence_open_connections()
            # Nothing closes: only the unanswered pings (4 x 200ms) tell.
            await wait_until(
                lambda: (
                    bus.connection.reconnects == 1
                    and bus.connection.state is ConnectionState.CONNECTED
                ),
                5,
            )
            await sink.send(delivery("evt_after", seq=2))
            assert sink.counts.acked == 2
        finally:
            await bus.stop()
