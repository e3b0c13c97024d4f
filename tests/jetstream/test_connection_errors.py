"""Errors a NATS server reports on a connection it keeps open (a permissions violation): the
connection stays up and ready, the denied publish fails at once and for good, and a
consume-only user goes on consuming when a stream check it may not make is denied."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import Config, build_config
from bridge.errors import PermanentDeliveryError
from bridge.nats.connection import ConnectionState
from bridge.nats.denials import denied_subject
from bridge.nats.stream import StreamState
from bridge.sinks import SINK_TYPES
from tests.conftest import WEBHOOK_SECRET, read_lines, running_bridge, wait_until

from .conftest import (
    NatsServer,
    bound_bus,
    delivery,
    event_body,
    load_raw,
    nats_client,
    nats_section,
    sidecar_raw,
    stream_messages,
)

USERS = """
authorization {
  users = [
    {user: edge, password: edge-pw-31c7, permissions: {
        publish: {allow: ["openmail.inb_support.>", "$JS.API.>"]},
        subscribe: {allow: ["_INBOX.>"]}}}
    {user: agent, password: agent-pw-8e02, permissions: {
        publish: {allow: ["$JS.API.CONSUMER.>", "$JS.ACK.OPENMAIL.>"]},
        subscribe: {allow: ["_INBOX.>"]}}}
    {user: admin, password: admin-pw-5a4d}
  ]
}
"""
ADMIN = {"user": "admin", "password": "admin-pw-5a4d"}
PUBACK_WAIT = 30.0
"""The sink's PubAck timeout in these tests: a denial must end a publish long before it."""


def users_server(tmp_path: Path, make_nats_server: Any) -> NatsServer:
    conf = tmp_path / "users.conf"
    conf.write_text(USERS)
    server: NatsServer = make_nats_server("-c", str(conf))
    return server


def edge_config(tmp_path: Path, server: NatsServer) -> Config:
    raw = {
        "openmail": {"websocket": {"enabled": False}, "webhook": {"secret": WEBHOOK_SECRET}},
        "nats": nats_section(server, user="edge", password="edge-pw-31c7"),
        "sinks": {"bus": {"type": "nats", "timeout": f"{PUBACK_WAIT:g}s"}},
    }
    return build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})


async def stream_ids(server: NatsServer) -> list[str]:
    async with nats_client(server, **ADMIN) as client:
        return [m.headers["Nats-Msg-Id"] for m in await stream_messages(client.jetstream())]


def test_the_denied_subject_is_read_from_the_report_nats_py_passes_on() -> None:
    # nats-py lowercases the server's -ERR line, subject included.
    report = 'nats: permissions violation for publish to "openmail.inb_other.message_received"'
    assert denied_subject(report) == "openmail.inb_other.message_received"
    assert (
        denied_subject('nats: permissions violation for publish with reply of "_inbox.x"') is None
    )
    assert denied_subject('nats: permissions violation for subscription to "a.b"') is None
    assert denied_subject("nats: slow consumer, messages dropped") is None


async def test_a_denied_publish_is_permanent_for_its_event_and_the_connection_stays_up(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = users_server(tmp_path, make_nats_server)
    config = edge_config(tmp_path, server)
    bus, sink = await bound_bus(config)
    try:
        await bus.connection.wait_connected()
        with structlog.testing.capture_logs() as logs:
            # Ends at the server's -ERR, not at the PubAck timeout.
            async with asyncio.timeout(PUBACK_WAIT / 3):
                for seq, event_id in enumerate(("evt_denied_1", "evt_denied_2"), start=1):
                    with pytest.raises(PermanentDeliveryError) as denied:
                        await sink.send(delivery(event_id, inbox="inb_other", seq=seq))
            await sink.send(delivery("evt_allowed", seq=3))
        assert "denies this user publishing to openmail.inb_other.message_received" in str(
            denied.value
        )
        assert bus.connection.state is ConnectionState.CONNECTED
        assert bus.connection.connected
        assert bus.connection.reconnects == 0
        assert "permissions violation" in str(bus.connection.status()["last_error"])
        assert (sink.counts.acked, sink.counts.failed) == (1, 2)
        # One line for the burst: each denied publish is one report from the server.
        [error] = [e for e in logs if e["event"] == "nats.error"]
        assert error["log_level"] == "warning"
        assert "may not publish there" in error["hint"]
        assert not [e for e in logs if e["event"] == "nats.disconnected"]
    finally:
        await bus.stop()
    assert await stream_ids(server) == ["evt_allowed"]


async def test_a_consume_only_user_keeps_consuming_when_a_stream_check_is_denied(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server = users_server(tmp_path, make_nats_server)
    async with nats_client(server, **ADMIN) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["openmail.>"], duplicate_window=120.0
        )

    async def publish(event_id: str) -> None:
        async with nats_client(server, **ADMIN) as client:
            await client.jetstream().publish(
                "openmail.inb_support.message_received",
                event_body(event_id),
                headers={"Nats-Msg-Id": event_id, "X-Event-Id": event_id},
            )

    def consumed() -> list[str]:
        return [line["event_id"] for line in read_lines(tmp_path / "events.jsonl")]

    config = load_raw(
        tmp_path, sidecar_raw(tmp_path, server, user="agent", password="agent-pw-8e02")
    )
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        await publish("evt_1")
        await wait_until(lambda: consumed() == ["evt_1"], 10)
        # A /metrics scrape checks the stream again; this user may not read it. The denial
        # ends the check at once, and the connection stays up.
        async with asyncio.timeout(3):
            await bridge.metrics_text()
        nats = bridge._parts().nats
        assert nats is not None
        assert nats.stream.state is StreamState.UNREACHABLE
        assert "permissions violation" in (nats.stream.problem or "")
        assert bridge.readiness()[0] == "ready"
        assert bridge.readiness()[1]["nats"] == "connected"
        await publish("evt_2")
        await wait_until(lambda: consumed() == ["evt_1", "evt_2"], 10)
