"""What an operator reads of NATS, against a real nats-server: ``openmail-bridge status`` (text)
on an edge and on a sidecar, the consumer gauges only where there is a consumer, and
``nats-status`` before the stream or the consumer exists."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bridge.cli.status_text import format_status
from bridge.supervisor import Supervisor
from tests.conftest import make_config, run_cli, running_bridge, signed, wait_until, write_config

from .conftest import (
    NatsServer,
    create_stream,
    event_body,
    load_raw,
    nats_client,
    nats_section,
    sidecar_raw,
)

CONSUMER_GAUGES = (
    "openmail_bridge_nats_consumer_pending",
    "openmail_bridge_nats_consumer_ack_pending",
    "openmail_bridge_nats_consumer_redelivered",
)


async def publish(server: NatsServer, count: int) -> None:
    async with nats_client(server) as client:
        js = client.jetstream()
        for i in range(count):
            body = event_body(f"evt_{i}")
            await js.publish("openmail.inb_support.thr_1", body, headers={"Nats-Msg-Id": f"m{i}"})


async def consumer_settled(server: NatsServer) -> bool:
    async with nats_client(server) as client:
        info = await client.jetstream().consumer_info("OPENMAIL", "agent-support")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


@contextlib.asynccontextmanager
async def settled_sidecar(
    tmp_path: Path, server: NatsServer, published: int
) -> AsyncIterator[Supervisor]:
    """A ready sidecar that has consumed and acked ``published`` messages; its admin server on."""
    async with running_bridge(load_raw(tmp_path, sidecar_raw(tmp_path, server))) as bridge:
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        await publish(server, published)
        await wait_until(lambda: consumer_settled(server), 10)
        assert bridge.admin is not None
        yield bridge


def exported(metrics: str, name: str) -> bool:
    return any(line.split(" ")[0] == name for line in metrics.splitlines())


# --- status (text) -------------------------------------------------------------------------------


async def test_status_of_a_sidecar_shows_its_consumer_and_no_websocket_cursor(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with settled_sidecar(tmp_path, nats_server, 3) as bridge:
        assert bridge.admin is not None
        code, out, err = await run_cli("status", "--admin", f"127.0.0.1:{bridge.admin.port}")
        metrics = (await bridge.metrics_text()).decode()
    assert code == 0, err
    lines = out.splitlines()
    assert not [line for line in lines if line.startswith("cursor:")], out
    assert "  nats: connected" in lines, out  # the part, once
    (server,) = [line for line in lines if line.startswith("  server: ")]
    assert server.startswith(f"  server: {nats_server.url}, since "), out
    assert "  stream OPENMAIL: created, 3 messages, last sequence 3" in lines, out
    assert "  consumer agent-support: consuming, pending 0, ack pending 0, redelivered 0" in lines
    assert "    acked 3, terminated 0, unacked 0, held 0" in lines, out
    assert not [line for line in lines if "publishes" in line], out
    for gauge in CONSUMER_GAUGES:
        assert exported(metrics, gauge), gauge  # a sidecar has its consumer's gauges


async def test_status_of_an_edge_shows_its_publishes_and_exports_no_consumer_gauges(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = make_config(tmp_path, nats=nats_section(nats_server), sinks={"bus": {"type": "nats"}})
    async with running_bridge(config) as bridge, aiohttp.ClientSession() as http:
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
        assert bridge.webhook is not None
        url = f"http://127.0.0.1:{bridge.webhook.port}/webhooks"
        for i in range(2):
            body = event_body(f"evt_{i}")
            async with http.post(url, data=body, headers=signed(body)) as response:
                assert response.status == 200
        await wait_until(lambda: bridge.dispatcher.workers["bus"].state.delivered == 2, 10)
        shown = format_status(await bridge.status(), time.time()).splitlines()
        metrics = (await bridge.metrics_text()).decode()
    publishes = "  publishes bus (openmail.{inbox_id}.{event}): acked 2, duplicate 0, failed 0"
    assert publishes in shown, "\n".join(shown)
    assert [line for line in shown if line.startswith("  stream OPENMAIL: ")] == [
        "  stream OPENMAIL: created, 2 messages, last sequence 2"
    ]
    assert not [line for line in shown if "consumer" in line], shown
    assert exported(metrics, "openmail_bridge_nats_stream_messages")
    for gauge in CONSUMER_GAUGES:
        assert not exported(metrics, gauge), gauge  # no consumer: no reading, not a healthy 0


async def test_status_answers_while_the_nats_server_is_stopped(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # A server that takes connections and answers nothing (SIGSTOP, a partition) made each
    # /status wait out nats-py's request timeouts (5 s for the stream, 2 for the consumer), and
    # `status` (which gives up at 5 s) said no bridge answered.
    async with settled_sidecar(tmp_path, nats_server, 2) as bridge:
        assert bridge.admin is not None
        assert nats_server.process is not None
        os.kill(nats_server.process.pid, signal.SIGSTOP)
        try:
            code, out, err = await run_cli("status", "--admin", f"127.0.0.1:{bridge.admin.port}")
        finally:
            os.kill(nats_server.process.pid, signal.SIGCONT)
    assert code == 0, err
    # What was read before stands, said to be an old reading.
    (stream,) = [line for line in out.splitlines() if line.startswith("  stream OPENMAIL: ")]
    assert stream.startswith("  stream OPENMAIL: created, "), out
    assert stream.endswith(" ago: no answer since)"), out


# --- nats-status ---------------------------------------------------------------------------------


async def test_nats_status_before_the_sidecar_made_its_consumer(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    await create_stream(nats_server)
    await publish(nats_server, 2)
    path = write_config(tmp_path / "sidecar.yaml", sidecar_raw(tmp_path, nats_server))
    code, out, err = await run_cli("nats-status", "-c", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"server: {nats_server.url}"
    assert "stream:" in lines
    assert "  messages: 2" in lines
    assert lines[-1] == (
        "consumer: agent-support does not exist yet: the sidecar creates it when it first starts"
    )
    assert err == ""

    code, out, err = await run_cli("nats-status", "-c", str(path), "--json")
    assert code == 0, err
    shown: Any = json.loads(out)
    assert shown["stream"]["exists"] is True
    assert shown["stream"]["last_seq"] == 2
    assert shown["consumer"] == {"name": "agent-support", "exists": False}


async def test_nats_status_before_any_bridge_made_the_stream(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    path = write_config(tmp_path / "sidecar.yaml", sidecar_raw(tmp_path, nats_server))
    code, out, err = await run_cli("nats-status", "-c", str(path))
    assert code == 0, err
    assert out.splitlines()[1:] == [
        "stream: OPENMAIL does not exist yet: a bridge creates it when it first connects",
        "consumer: agent-support does not exist yet: the sidecar creates it when it first starts",
    ]
    code, out, err = await run_cli("nats-status", "-c", str(path), "--json")
    assert code == 0, err
    shown: Any = json.loads(out)
    assert shown["stream"] == {"name": "OPENMAIL", "exists": False}
