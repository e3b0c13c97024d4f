"""Publishes no retry can change are permanent for their event alone: one larger than the
server's max_payload (headers counted) or the stream's max_msg_size, one to a subject the NATS
user may not publish to. The event is dead-lettered, the rest of its thread goes on, and a
webhook limit over the server's is warned about once connected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from bridge.config import Config
from bridge.errors import PermanentDeliveryError
from bridge.nats.bus import NatsBus
from bridge.sinks.nats import NatsSink
from bridge.supervisor import Supervisor
from tests.conftest import make_config, running_bridge, signed, wait_until

from .conftest import (
    NatsServer,
    bound_bus,
    delivery,
    event_body,
    nats_client,
    nats_section,
    stream_messages,
)
from .test_connection_errors import ADMIN, edge_config, users_server

MAX_PAYLOAD = 4096


def small_server(tmp_path: Path, make_nats_server: Any) -> NatsServer:
    """A server taking at most MAX_PAYLOAD bytes per message (headers included)."""
    conf = tmp_path / "small.conf"
    conf.write_text(f"max_payload: {MAX_PAYLOAD}\n")
    server: NatsServer = make_nats_server("-c", str(conf))
    return server


def padded(event_id: str, size: int, *, thread: str = "thr_1") -> bytes:
    """An event body of exactly ``size`` bytes."""
    body = event_body(event_id, thread=thread, note="")
    return event_body(event_id, thread=thread, note="x" * (size - len(body)))


async def bus_and_sink(config: Config) -> tuple[NatsBus, NatsSink]:
    bus, sink = await bound_bus(config)
    await bus.connection.wait_connected()
    return bus, sink


def sink_config(tmp_path: Path, server: NatsServer) -> Config:
    return make_config(
        tmp_path, nats=nats_section(server), sinks={"bus": {"type": "nats", "timeout": "2s"}}
    )


async def stream_ids(server: NatsServer, **auth: str) -> list[str]:
    async with nats_client(server, **auth) as client:
        return [m.headers["Nats-Msg-Id"] for m in await stream_messages(client.jetstream())]


async def test_an_event_over_max_payload_is_permanent_and_names_both_sizes(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = small_server(tmp_path, make_nats_server)
    bus, sink = await bus_and_sink(sink_config(tmp_path, server))
    try:
        big = delivery("evt_big", payload=padded("evt_big", MAX_PAYLOAD + 1000))
        with pytest.raises(PermanentDeliveryError) as failed:
            await sink.send(big)
        assert f"event is {MAX_PAYLOAD + 1000} bytes" in str(failed.value)
        assert f"max_payload of {MAX_PAYLOAD} bytes of NATS server {server.url}" in str(
            failed.value
        )
        assert sink.counts.failed == 1
    finally:
        await bus.stop()


async def test_an_event_taken_over_max_payload_by_its_headers_is_permanent_and_the_connection_stays(
    tmp_path: Path, make_nats_server: Any
) -> None:
    # nats-py checks the payload alone; the server counts the headers too and would close the
    # connection on it, over and over at each retry.
    server = small_server(tmp_path, make_nats_server)
    bus, sink = await bus_and_sink(sink_config(tmp_path, server))
    try:
        near = delivery("evt_near", payload=padded("evt_near", MAX_PAYLOAD - 20))
        with pytest.raises(PermanentDeliveryError, match="with its NATS headers"):
            await sink.send(near)
        await sink.send(delivery("evt_after", seq=2))
        assert bus.connection.reconnects == 0
    finally:
        await bus.stop()
    assert await stream_ids(server) == ["evt_after"]


async def test_an_event_over_the_streams_max_msg_size_is_permanent(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with nats_client(nats_server) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["openmail.>"], duplicate_window=600.0, max_msg_size=512
        )
    bus, sink = await bus_and_sink(sink_config(tmp_path, nats_server))
    try:
        big = delivery("evt_big", payload=padded("evt_big", 1000))
        with pytest.raises(PermanentDeliveryError, match="max_msg_size"):
            await sink.send(big)
        await sink.send(delivery("evt_small", seq=2))
    finally:
        await bus.stop()
    assert await stream_ids(nats_server) == ["evt_small"]


async def post(bridge: Supervisor, body: bytes) -> None:
    assert bridge.webhook is not None
    url = f"http://127.0.0.1:{bridge.webhook.port}/webhooks"
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=body, headers=signed(body)) as r,
    ):
        assert r.status == 200


async def test_a_bridge_dead_letters_the_oversize_event_and_publishes_the_rest_of_its_thread(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = small_server(tmp_path, make_nats_server)
    config = make_config(
        tmp_path,
        nats=nats_section(server),
        sinks={"bus": {"type": "nats", "timeout": "2s", "retry": {"initial": "50ms"}}},
    )
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
            await post(bridge, padded("evt_big", MAX_PAYLOAD * 2))
            await post(bridge, event_body("evt_next"))  # the same thread
            await wait_until(lambda: bridge.dispatcher.workers["bus"].state.delivered == 1, 10)
            status: Any = await bridge.status()
    assert await stream_ids(server) == ["evt_next"]
    assert status["sinks"]["bus"]["dead"] == 1
    assert f"max_payload of {MAX_PAYLOAD} bytes" in status["sinks"]["bus"]["last_error"]
    # The webhook takes up to 10 MiB (max_body's default): said once, after connecting.
    [warned] = [e for e in logs if e["event"] == "nats.max_payload_below_max_body"]
    assert warned["log_level"] == "warning"
    assert (warned["max_payload"], warned["max_body"]) == (MAX_PAYLOAD, 10 << 20)
    assert warned["server"] == server.url


async def test_no_max_payload_warning_when_the_webhook_limit_fits(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = small_server(tmp_path, make_nats_server)
    fits = make_config(
        tmp_path,
        openmail={"webhook": {"max_body": MAX_PAYLOAD // 2}},
        nats=nats_section(server),
        sinks={"bus": {"type": "nats"}},
    )
    assert fits.nats is not None
    assert fits.nats.webhook_max_body == MAX_PAYLOAD // 2
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(fits) as bridge:
            await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
    assert [e for e in logs if e["event"] == "nats.connected"]
    assert not [e for e in logs if e["event"] == "nats.max_payload_below_max_body"]


async def test_a_bridge_dead_letters_a_denied_event_and_publishes_the_ones_after(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = users_server(tmp_path, make_nats_server)
    config = edge_config(tmp_path, server)
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
        await post(bridge, event_body("evt_denied", inbox="inb_other"))
        for i in range(3):
            await post(bridge, event_body(f"evt_{i}"))
        await wait_until(lambda: bridge.dispatcher.workers["bus"].state.delivered == 3, 10)
        status: Any = await bridge.status()
    assert await stream_ids(server, **ADMIN) == ["evt_0", "evt_1", "evt_2"]
    assert status["sinks"]["bus"]["dead"] == 1
    assert "openmail.inb_other.message_received" in status["sinks"]["bus"]["last_error"]
    assert status["nats"]["connection"]["state"] == "connected"
