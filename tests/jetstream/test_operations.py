"""Readiness, ``/readyz``, ``/metrics``, a wrong credential, ``nats-status`` and the cluster
fixture, against real nats-servers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from tests.conftest import (
    free_port,
    make_config,
    run_cli,
    running_bridge,
    wait_until,
    write_config,
)

from .conftest import NatsServer, load_raw, nats_client, nats_section, sidecar_raw

TOKEN = "right-token-4c2a9d"
WRONG = "wrong-token-b7e1f3"


async def readyz(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, await response.json()


async def test_a_sidecar_with_a_wrong_credential_is_unavailable_and_says_why(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server: NatsServer = make_nats_server("--auth", TOKEN)
    raw = sidecar_raw(tmp_path, server, token=WRONG)
    config = load_raw(tmp_path, raw)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(lambda: bridge.readiness()[1].get("nats") == "auth_failed", 10)
            assert bridge.admin is not None
            assert bridge.admin.port is not None
            status, body = await readyz(bridge.admin.port)
            report: Any = await bridge.status()
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["nats"] == "auth_failed"
    [failed] = [entry for entry in logs if entry["event"] == "nats.auth_failed"]
    assert failed["server"] == server.url
    assert failed["log_level"] == "error"
    assert report["nats"]["connection"]["state"] == "auth_failed"
    assert WRONG not in json.dumps(report) + repr(logs)


async def test_a_sidecar_with_the_server_down_is_unavailable_until_it_comes_up(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nats_server.stop()
    config = load_raw(tmp_path, sidecar_raw(tmp_path, nats_server))
    async with running_bridge(config) as bridge:
        # The bridge runs, says why it is not ready, and retries.
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "disconnected", 10)
        assert bridge.readiness()[0] == "unavailable"
        nats_server.start()
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        assert bridge.readiness()[1]["nats"] == "connected"


async def test_an_edge_whose_sink_cannot_publish_stays_ready(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server: NatsServer = make_nats_server("--auth", TOKEN)
    config = make_config(
        tmp_path,
        nats=nats_section(server, token=WRONG, user=None),
        sinks={"bus": {"type": "nats"}},
    )
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "auth_failed", 10)
        state, parts = bridge.readiness()
        metrics = (await bridge.metrics_text()).decode()
    assert state == "ready"  # the webhook still takes events in; the spool holds them
    assert parts["webhook"] == "listening"
    assert "openmail_bridge_nats_connected 0.0" in metrics


async def test_metrics_cover_connection_stream_and_publishes(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = make_config(tmp_path, nats=nats_section(nats_server), sinks={"bus": {"type": "nats"}})
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
        nats = bridge._parts().nats
        assert nats is not None
        nats_server.stop()
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "disconnected", 10)
        nats_server.start()
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
        metrics = (await bridge.metrics_text()).decode()
    assert "openmail_bridge_nats_connected 1.0" in metrics
    assert "openmail_bridge_nats_reconnects_total 1.0" in metrics
    assert "openmail_bridge_nats_stream_messages 0.0" in metrics
    assert "openmail_bridge_nats_stream_last_sequence 0.0" in metrics


async def test_nats_status_shows_stream_and_consumer(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    raw = sidecar_raw(tmp_path, nats_server)
    config = load_raw(tmp_path, raw)
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
    async with nats_client(nats_server) as client:
        await client.jetstream().publish("openmail.inb_a.x", b"{}", headers={"Nats-Msg-Id": "1"})
    path = write_config(tmp_path / "sidecar.yaml", raw)
    code, out, err = await run_cli("nats-status", "-c", str(path), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["server"] == nats_server.url
    assert shown["stream"]["name"] == "OPENMAIL"
    assert shown["stream"]["messages"] == 1
    assert shown["stream"]["last_seq"] == 1
    assert shown["consumer"]["name"] == "agent-support"
    assert shown["consumer"]["pending"] == 1

    code, out, err = await run_cli("nats-status", "-c", str(path))
    assert code == 0, err
    assert "messages: 1" in out


async def test_nats_status_names_the_server_and_masks_the_credential(
    tmp_path: Path, make_nats_server: Any
) -> None:
    server: NatsServer = make_nats_server("--user", "alice", "--pass", "right-pass-1")
    user_url = server.url.replace("nats://", "nats://alice:wrong-pass-93@")
    raw = sidecar_raw(tmp_path, server, servers=[user_url])
    path = write_config(tmp_path / "sidecar.yaml", raw)
    code, out, err = await run_cli("nats-status", "-c", str(path))
    assert code == 1
    assert f"nats://***@127.0.0.1:{server.port}" in err
    assert "refused the credentials" in err
    assert "wrong-pass-93" not in out + err


async def test_nats_status_with_a_stopped_server_says_it_answers_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # SIGSTOP: the kernel still takes the connection, the server answers nothing.
    path = write_config(tmp_path / "sidecar.yaml", sidecar_raw(tmp_path, nats_server))
    assert nats_server.process is not None
    os.kill(nats_server.process.pid, signal.SIGSTOP)
    try:
        code, out, err = await run_cli("nats-status", "-c", str(path))  # within run_cli's 30 s
    finally:
        os.kill(nats_server.process.pid, signal.SIGCONT)
    assert code == 1
    assert "answers nothing (stopped, or overloaded)" in err, err
    assert out == ""


async def test_nats_status_with_no_server_answering_exits_1(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    closed = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    raw = sidecar_raw(tmp_path, nats_server, servers=[closed])
    path = write_config(tmp_path / "sidecar.yaml", raw)
    code, out, err = await run_cli("nats-status", "-c", str(path))  # within run_cli's 30 s
    assert code == 1
    assert f"NATS at {closed}: no server answers" in err
    assert out == ""


async def test_the_cluster_fixture_holds_a_replicated_stream(
    nats_cluster: list[NatsServer],
) -> None:
    async with nats_client(nats_cluster[0], servers=[n.url for n in nats_cluster]) as client:
        js = client.jetstream()

        async def stream_created() -> bool:
            try:
                await js.add_stream(name="R3", subjects=["r3.>"], num_replicas=3)
            except Exception:  # the cluster is still electing its meta leader
                return False
            return True

        await wait_until(stream_created, 20, interval=0.2)
        ack = await js.publish("r3.a", b"x", headers={"Nats-Msg-Id": "one"})
        info = await js.stream_info("R3")
    assert ack.seq == 1
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert len(info.cluster.replicas or []) == 2
