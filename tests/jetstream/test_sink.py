"""The NATS sink against a real nats-server: headers and bytes, PubAck duplicates, outages,
stream validation, and thread order through a running bridge."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats.js.errors
import pytest

from bridge.config import Config, build_config
from bridge.errors import RetryableDeliveryError
from bridge.nats.bus import NatsBus
from bridge.nats.connection import ConnectionState
from bridge.nats.stream import StreamState
from bridge.sinks import SINK_TYPES
from bridge.sinks.nats import NatsSink
from tests.conftest import (
    WEBHOOK_SECRET,
    make_config,
    running_bridge,
    signed,
    wait_until,
)

from .conftest import (
    NatsServer,
    bound_bus,
    delivery,
    event_body,
    nats_client,
    nats_section,
    stream_messages,
)


def sink_config(tmp_path: Path, server: NatsServer, **sink: Any) -> Config:
    raw = {
        "openmail": {"websocket": {"enabled": False}, "webhook": {"secret": WEBHOOK_SECRET}},
        "nats": nats_section(server),
        "sinks": {"bus": {"type": "nats", "timeout": "1s", **sink}},
    }
    return build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})


async def started_bus(config: Config) -> tuple[NatsBus, NatsSink]:
    """The bus and the sink named ``bus``, connecting (stop the bus afterwards)."""
    bus, sink = await bound_bus(config)
    await sink.start()
    return bus, sink


@pytest.fixture
async def bus_and_sink(
    tmp_path: Path, nats_server: NatsServer
) -> AsyncIterator[tuple[NatsBus, NatsSink]]:
    bus, sink = await started_bus(sink_config(tmp_path, nats_server))
    await bus.connection.wait_connected()
    try:
        yield bus, sink
    finally:
        await sink.close()
        await bus.stop()


async def test_publishes_the_bytes_unchanged_with_the_headers(
    nats_server: NatsServer, bus_and_sink: tuple[NatsBus, NatsSink]
) -> None:
    bus, sink = bus_and_sink
    assert bus.stream.state is StreamState.CREATED
    raw = event_body("evt_1", note="  spaced  ")
    await sink.send(delivery("evt_1", raw))
    async with nats_client(nats_server) as client:
        [msg] = await stream_messages(client.jetstream())
    assert msg.subject == "openmail.inb_support.message_received"
    assert msg.data == raw
    assert msg.headers["Nats-Msg-Id"] == "evt_1"
    assert msg.headers["X-Event-Id"] == "evt_1"
    assert msg.headers["X-OpenMail-Bridge-Source"] == "webhook"
    assert msg.headers["Content-Type"] == "application/json"
    assert (sink.counts.acked, sink.counts.duplicate) == (1, 0)


async def test_a_duplicate_pubAck_is_done_and_the_stream_keeps_one_copy(
    nats_server: NatsServer, bus_and_sink: tuple[NatsBus, NatsSink]
) -> None:
    _, sink = bus_and_sink
    raw = event_body("evt_dup")
    await sink.send(delivery("evt_dup", raw))
    await sink.send(delivery("evt_dup", raw, seq=2))  # another edge's copy: no error
    async with nats_client(nats_server) as client:
        messages = await stream_messages(client.jetstream())
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ["evt_dup"]
    assert (sink.counts.acked, sink.counts.duplicate) == (1, 1)


async def test_a_copy_in_process_elsewhere_is_retried_and_no_failure(
    nats_server: NatsServer,
    bus_and_sink: tuple[NatsBus, NatsSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Two edges publishing one event to a clustered stream: while the first copy is being
    # stored, JetStream answers the second so. The race cannot be timed here: its answer is.
    bus, sink = bus_and_sink
    js = bus.connection.jetstream()
    assert js is not None
    real = type(js).publish

    async def racing(self: Any, *args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(type(js), "publish", real)  # once
        raise nats.js.errors.APIError(
            code=503, description="duplicate message id is in process", stream="OPENMAIL"
        )

    monkeypatch.setattr(type(js), "publish", racing)
    raw = event_body("evt_race")
    with pytest.raises(RetryableDeliveryError, match="another publisher's copy"):
        await sink.send(delivery("evt_race", raw))
    assert sink.counts.failed == 0  # nothing of this bridge failed
    assert bus.stream.state is not StreamState.INVALID
    await sink.send(delivery("evt_race", raw))  # the retry
    assert (sink.counts.acked, sink.counts.failed) == (1, 0)


async def test_server_down_is_retryable_and_publishing_resumes_after(
    nats_server: NatsServer, bus_and_sink: tuple[NatsBus, NatsSink]
) -> None:
    bus, sink = bus_and_sink
    await sink.send(delivery("evt_before", event_body("evt_before")))
    nats_server.stop()
    await wait_until(lambda: bus.connection.state is ConnectionState.DISCONNECTED, 5)
    with pytest.raises(RetryableDeliveryError, match=nats_server.url):
        await sink.send(delivery("evt_during", event_body("evt_during"), seq=2))
    assert sink.counts.failed == 1
    nats_server.start()  # same port, same store
    await wait_until(lambda: bus.connection.connected, 10)
    await sink.send(delivery("evt_during", event_body("evt_during"), seq=2))
    async with nats_client(nats_server) as client:
        messages = await stream_messages(client.jetstream())
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ["evt_before", "evt_during"]
    assert bus.connection.reconnects == 1


async def test_a_stream_not_covering_the_sink_is_a_clear_error(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with nats_client(nats_server) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["elsewhere.>"], duplicate_window=30.0
        )
    bus, sink = await started_bus(sink_config(tmp_path, nats_server))
    try:
        await bus.connection.wait_connected()
        assert bus.stream.state is StreamState.INVALID
        assert bus.stream.problem is not None
        assert "elsewhere.>" in bus.stream.problem
        assert "openmail.*.*" in bus.stream.problem
        [warning] = bus.stream.warnings
        assert "30s" in warning
        assert "120s" in warning
        with pytest.raises(RetryableDeliveryError, match="elsewhere"):
            await sink.send(delivery("evt_1", event_body("evt_1")))
    finally:
        await bus.stop()


async def test_a_bridge_publishes_each_thread_in_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = make_config(
        tmp_path,
        nats=nats_section(nats_server),
        sinks={"bus": {"type": "nats", "concurrency": 4}},
    )
    sent: dict[str, list[str]] = {"thr_a": [], "thr_b": []}
    async with running_bridge(config) as bridge, aiohttp.ClientSession() as http:
        assert bridge.webhook is not None
        url = f"http://127.0.0.1:{bridge.webhook.port}/webhooks"
        for i in range(40):
            thread = "thr_a" if i % 3 else "thr_b"
            body = event_body(f"evt_{i:03}", thread=thread)
            async with http.post(url, data=body, headers=signed(body)) as response:
                assert response.status == 200
            sent[thread].append(f"evt_{i:03}")
        await wait_until(lambda: bridge.dispatcher.workers["bus"].state.delivered == 40, 10)
        status: Any = await bridge.status()
    async with nats_client(nats_server) as client:
        messages = await stream_messages(client.jetstream())
    by_thread: dict[str, list[str]] = {"thr_a": [], "thr_b": []}
    for msg in messages:
        by_thread[json.loads(msg.data)["thread_id"]].append(msg.headers["Nats-Msg-Id"])
    assert by_thread == sent
    nats_status = status["nats"]
    assert nats_status["connection"]["state"] == "connected"
    assert nats_status["connection"]["server"] == nats_server.url
    assert nats_status["stream"]["messages"] == 40
    assert nats_status["stream"]["last_seq"] == 40
    assert nats_status["publishes"]["bus"]["acked"] == 40
