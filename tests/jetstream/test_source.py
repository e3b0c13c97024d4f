"""The NATS source against a real nats-server: a sidecar bridge consumes what edges published,
commits before it acks, terminates poison, and leaves un-acked what a full spool refused."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from bridge.config import Config
from bridge.supervisor import Supervisor
from tests.conftest import (
    AGENT_SECRET,
    Receiver,
    deep_merge,
    events_named,
    read_lines,
    running_bridge,
    wait_until,
)

from .conftest import NatsServer, event_body, load_raw, nats_client, sidecar_raw

HEADERS = {"X-OpenMail-Bridge-Source": "websocket", "Content-Type": "application/json"}


def sidecar_config(
    tmp_path: Path, server: NatsServer, sinks: dict[str, Any] | None = None, **overrides: Any
) -> Config:
    """A pure sidecar whose consumer waits 1 s for an ack."""
    raw = deep_merge(sidecar_raw(tmp_path, server, consume={"ack_wait": "1s"}), overrides)
    if sinks is not None:
        raw["sinks"] = sinks
    return load_raw(tmp_path, raw)


@contextlib.asynccontextmanager
async def running_sidecar(config: Config) -> AsyncIterator[Supervisor]:
    """A sidecar bridge, once it consumes (the stream exists from then on)."""
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        yield bridge


async def publish(server: NatsServer, events: Mapping[str, bytes], **headers: str) -> None:
    """Publish as an edge bridge does; the stream is the bridge's own (created on start)."""
    async with nats_client(server) as client:
        js = client.jetstream()
        for event_id, body in events.items():
            await js.publish(
                "openmail.inb_support.message_received",
                body,
                headers={"Nats-Msg-Id": event_id, "X-Event-Id": event_id, **HEADERS, **headers},
            )


def counted(bridge: Supervisor, name: str, **labels: str) -> float:
    metric = getattr(bridge.metrics, name)
    return float(metric.labels(*labels.values())._value.get())


async def consumer_settled(server: NatsServer) -> bool:
    async with nats_client(server) as client:
        info = await client.jetstream().consumer_info("OPENMAIL", "agent-support")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_a_sidecar_stores_then_acks_and_keeps_ids_bytes_and_origin(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    config = sidecar_config(
        tmp_path,
        nats_server,
        sinks={
            "agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET},
        },
    )
    bodies = {f"evt_{i}": event_body(f"evt_{i}") for i in range(5)}
    async with running_sidecar(config) as bridge:
        await publish(nats_server, bodies)
        await wait_until(lambda: len(receiver.accepted) == 5, 10)
        await wait_until(lambda: consumer_settled(nats_server), 10)
        assert counted(bridge, "events_received", source="nats") == 5
        assert counted(bridge, "events_received", source="websocket") == 0
        status: Any = await bridge.status()
        metrics = (await bridge.metrics_text()).decode()
    # Same ids, same bytes, and the origin the edge received them by.
    assert {r.headers["X-Event-Id"]: r.body for r in receiver.accepted} == bodies
    assert {r.headers["X-OpenMail-Bridge-Source"] for r in receiver.accepted} == {"websocket"}
    assert status["nats"]["consumer"]["acked"] == 5
    assert status["nats"]["consumer"]["pending"] == 0
    assert status["parts"]["nats"] == "connected"
    assert 'openmail_bridge_events_received_total{source="nats"} 5.0' in metrics
    assert "openmail_bridge_nats_consumer_pending 0.0" in metrics


async def test_a_duplicate_is_acked_and_not_stored_twice(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = sidecar_config(tmp_path, nats_server)
    body = event_body("evt_twice")
    async with running_sidecar(config) as bridge:
        await publish(nats_server, {"evt_twice": body})
        # The same event published under another message id: in the stream twice.
        await publish(nats_server, {"another-msg-id": body}, **{"X-Event-Id": "evt_twice"})
        await wait_until(lambda: counted(bridge, "events_duplicate", source="nats") == 1, 10)
        await wait_until(lambda: consumer_settled(nats_server), 10)
    assert [line["event_id"] for line in read_lines(tmp_path / "events.jsonl")] == ["evt_twice"]


async def test_poison_is_terminated_logged_counted_and_never_stored(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = sidecar_config(tmp_path, nats_server)
    poison = {
        "p1": b"not json at all",
        "p2": b"[1, 2, 3]",
        "p3": json.dumps({"event": "message.received"}).encode(),  # no id anywhere
        "p4": b'{"event_id": "evt_a", "event_id": "evt_b", "event": "x"}',  # strict JSON refuses
    }
    async with running_sidecar(config) as bridge:
        with structlog.testing.capture_logs() as logs:
            async with nats_client(nats_server) as client:
                js = client.jetstream()
                for msg_id, body in poison.items():
                    await js.publish("openmail.inb_x.bad", body, headers={"Nats-Msg-Id": msg_id})
            await publish(nats_server, {"evt_ok": event_body("evt_ok")})
            out = tmp_path / "events.jsonl"
            await wait_until(lambda: len(read_lines(out)) == 1, 10)
            await wait_until(lambda: consumer_settled(nats_server), 10)
        assert counted(bridge, "nats_poison", reason="no_event_id") == 1
        assert counted(bridge, "nats_poison", reason="invalid_payload") == 3
        source = bridge._parts().nats
        assert source is not None
        assert source.source is not None
        assert source.source.terminated == 4
    assert [line["event_id"] for line in read_lines(out)] == ["evt_ok"]
    # Throttled: the first poison message is logged, the rest counted.
    [logged] = events_named(logs, "nats.message_terminated")
    assert logged["reason"] in ("invalid_payload", "no_event_id")


async def test_a_full_spool_leaves_messages_unacked_and_they_come_back(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False  # nothing drains: the spool fills
    config = sidecar_config(
        tmp_path,
        nats_server,
        state={"max_bytes": "3KiB", "min_free": "0B"},
        sinks={
            "agent": {
                "type": "http",
                "url": receiver.url,
                "secret": AGENT_SECRET,
                "retry": {"initial": "20ms", "max": "100ms"},
            },
        },
    )
    bodies = {f"evt_{i:02}": event_body(f"evt_{i:02}") for i in range(30)}
    async with running_sidecar(config) as bridge:
        await publish(nats_server, bodies)
        nats = bridge._parts().nats
        assert nats is not None
        assert nats.source is not None
        consumer = nats.source
        await wait_until(lambda: consumer.unacked > 0, 10)
        assert consumer.acked < len(bodies)
        receiver.up = True
        await wait_until(lambda: set(receiver.accepted_ids()) == set(bodies), 20)
        await wait_until(lambda: consumer_settled(nats_server), 10)
    # Each event reached the agent once: nothing was acked that was not stored.
    assert sorted(receiver.accepted_ids()) == sorted(bodies)


async def test_consuming_resumes_after_an_outage(tmp_path: Path, nats_server: NatsServer) -> None:
    config = sidecar_config(tmp_path, nats_server)
    out = tmp_path / "events.jsonl"
    async with running_sidecar(config) as bridge:
        await publish(nats_server, {"evt_a": event_body("evt_a")})
        await wait_until(lambda: len(read_lines(out)) == 1, 10)
        nats_server.stop()
        await wait_until(lambda: bridge.readiness()[0] == "unavailable", 10)
        assert bridge.readiness()[1]["nats"] == "disconnected"
        nats_server.start()  # same port and store: the stream and the durable consumer remain
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        await publish(nats_server, {"evt_b": event_body("evt_b")})
        await wait_until(lambda: len(read_lines(out)) == 2, 10)
    assert [line["event_id"] for line in read_lines(out)] == ["evt_a", "evt_b"]


async def test_an_existing_consumer_unlike_the_config_is_used_as_it_is_with_a_warning(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    raw = sidecar_raw(
        tmp_path, nats_server, consume={"filter_subjects": ["openmail.inb_a.>"], "ack_wait": "30s"}
    )
    async with running_sidecar(load_raw(tmp_path, raw)):
        pass  # the durable consumer now exists, with inb_a and 30s
    raw["nats"]["consume"].update(ack_wait="90s")
    with structlog.testing.capture_logs() as logs:
        async with running_sidecar(load_raw(tmp_path, raw)):
            pass
    (warning,) = [e for e in logs if e["event"] == "nats.consumer_differs"]
    assert warning["log_level"] == "warning"
    assert warning["differs"] == {"ack_wait": {"server": 30.0, "config": 90.0}}
    assert "nats consumer edit" in warning["hint"]
    async with nats_client(nats_server) as client:
        info = await client.jetstream().consumer_info("OPENMAIL", "agent-support")
    assert info.config.ack_wait == 30.0  # unchanged on the server
    assert not [e for e in logs if e["event"] == "nats.consumer_created"]
