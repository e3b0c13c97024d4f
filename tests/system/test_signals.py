"""Real signals to a real ``openmail-bridge run``: SIGTERM/SIGINT drain and exit 0 with undelivered
events kept for the next start; SIGHUP reloads a valid config, rejects an invalid one, swaps the
webhook secret, and reopens file sinks after logrotate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    AGENT_SECRET,
    WEBHOOK_SECRET,
    BridgeProcess,
    Receiver,
    accepts_connections,
    bridge_config_dict,
    free_port,
    read_lines,
    signed,
    start_bridge_process,
    wait_until,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from bridge.simulator import Simulator
from bridge.store import Store

pytestmark = pytest.mark.system


def event_body(event_id: str) -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": "inb_demo_support",
            "occurred_at": "2026-02-24T10:05:00Z",
            "message": {"id": f"msg_{event_id}", "subject": "hi"},
        }
    ).encode()


@dataclass
class Bridge:
    """A bridge subprocess on fixed ports, and the calls a test makes to it."""

    process: BridgeProcess
    data: dict[str, Any]
    webhook_port: int
    admin_port: int
    http: aiohttp.ClientSession

    async def post(self, event_id: str, secret: str = WEBHOOK_SECRET) -> int:
        body = event_body(event_id)
        url = f"http://127.0.0.1:{self.webhook_port}/webhooks"
        async with self.http.post(url, data=body, headers=signed(body, secret)) as response:
            return response.status

    async def admin(self, path: str) -> tuple[int, str]:
        async with self.http.get(f"http://127.0.0.1:{self.admin_port}{path}") as response:
            return response.status, await response.text()

    async def status(self) -> dict[str, Any]:
        code, text = await self.admin("/status")
        assert code == 200
        result: dict[str, Any] = json.loads(text)
        return result

    async def metric(self, name: str, **labels: str) -> float | None:
        _, text = await self.admin("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None

    def rewrite(self, **changes: Any) -> None:
        self.data = {**self.data, **changes}
        write_config(self.process.config_path, self.data)

    def signal(self, signum: int) -> None:
        self.process.signal(signum)

    async def exit_code(self) -> int:
        """The exit status, waited for in a thread so this loop's receivers keep serving."""
        return await asyncio.to_thread(self.process.wait, 20.0)

    async def wait_log(self, event: str, count: int = 1) -> None:
        await wait_until(lambda: self.process.log_events().count(event) >= count)

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [entry for entry in self.process.logs() if entry.get("event") == event]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def launch(
    tmp_path: Path, http: aiohttp.ClientSession, bridge_processes: list[BridgeProcess]
) -> Any:
    """``await launch(data)``: run the bridge on fixed free ports and wait until it answers."""
    ports: dict[str, int] = {}

    async def start(data: dict[str, Any]) -> Bridge:
        ports.setdefault("webhook", free_port())
        ports.setdefault("admin", free_port())
        data = {**data, "admin": {"listen": f"127.0.0.1:{ports['admin']}"}}
        data["openmail"] = {
            **data["openmail"],
            "webhook": {**data["openmail"]["webhook"], "listen": f"127.0.0.1:{ports['webhook']}"},
        }
        path = write_config(tmp_path / "bridge.yaml", data)
        process = start_bridge_process(path)
        bridge_processes.append(process)
        bridge = Bridge(process, data, ports["webhook"], ports["admin"], http)

        async def answers() -> bool:
            assert process.proc.poll() is None, process.stderr_path.read_text()
            with contextlib.suppress(aiohttp.ClientError):
                healthy = (await bridge.admin("/healthz"))[0] == 200
                return healthy and await accepts_connections(ports["webhook"])
            return False

        await wait_until(answers, timeout=15)
        return bridge

    return start


async def pending_in_store(state_path: Path, sink: str) -> list[str]:
    store = await Store.open(state_path)
    try:
        return [d.event_id for d in await store.pending(sink)]
    finally:
        await store.close()


# --- SIGTERM / SIGINT -----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_drains_exits_0_and_next_start_delivers_the_rest(
    signum: int, sim: Simulator, tmp_path: Path, receiver: Receiver, launch: Any
) -> None:
    receiver.up = False  # the agent is down during shutdown: every delivery keeps retrying
    data = bridge_config_dict(
        tmp_path,
        sim,
        shutdown_timeout="1s",
        sinks={
            "agent": {
                "type": "http",
                "url": receiver.url,
                "secret": AGENT_SECRET,
                "ordering": "none",
                "concurrency": 8,
                "retry": {"initial": "50ms", "max": "200ms"},
            }
        },
    )
    bridge = await launch(data)
    await wait_until(lambda: len(sim.connections) == 1 and sim.connections[0].subscribed)
    sent = [await sim.inject() for _ in range(2)]
    for i in range(3):
        assert await bridge.post(f"evt_hook_{i}") == 200  # 200 = durably stored
        sent.append(f"evt_hook_{i}")
    await wait_until(lambda: {r.json["event_id"] for r in receiver.received} == set(sent))

    started = time.monotonic()
    bridge.signal(signum)
    assert await bridge.exit_code() == 0
    assert time.monotonic() - started < 1.0 + 4.0  # shutdown_timeout plus start-up slack
    signals = bridge.logged("bridge.signal")
    assert signals
    assert signals[0]["signal"] == signal.Signals(signum).name
    assert signals[0]["action"] == "drain and stop"
    events = bridge.process.log_events()
    assert (
        events.index("bridge.stopping")
        < events.index("store.closed")
        < events.index("bridge.stopped")
    )
    assert receiver.accepted == []
    assert sorted(await pending_in_store(Path(data["state"]["path"]), "agent")) == sorted(sent)

    receiver.up = True
    again = await launch(data)
    await wait_until(lambda: set(receiver.accepted_ids()) == set(sent))
    # Not while the WebSocket is still connecting: see the xfail in tests/test_supervisor.py.
    await wait_until(lambda: len(sim.connections) == 1 and sim.connections[0].subscribed)
    again.signal(signal.SIGTERM)
    assert await again.exit_code() == 0
    assert await pending_in_store(Path(data["state"]["path"]), "agent") == []


async def test_sigterm_with_a_slow_agent_stops_at_shutdown_timeout_and_keeps_the_event(
    tmp_path: Path, receiver: Receiver, launch: Any
) -> None:
    receiver.delay = 3.0  # a delivery is in flight when SIGTERM arrives and outlasts the deadline
    data = bridge_config_dict(
        tmp_path,
        None,
        shutdown_timeout="500ms",
        sinks={"agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET}},
    )
    bridge = await launch(data)
    assert await bridge.post("evt_slow") == 200
    await wait_until(lambda: len(receiver.received) == 1)

    started = time.monotonic()
    bridge.signal(signal.SIGTERM)
    assert await bridge.exit_code() == 0
    assert time.monotonic() - started < 2.5  # did not wait out the agent's 3 s
    assert await pending_in_store(Path(data["state"]["path"]), "agent") == ["evt_slow"]

    receiver.delay = 0.0
    again = await launch(data)
    await wait_until(lambda: "evt_slow" in receiver.accepted_ids())
    again.signal(signal.SIGTERM)
    assert await again.exit_code() == 0


# --- SIGHUP ---------------------------------------------------------------------------------------


async def test_sighup_with_a_valid_config_adds_a_sink_and_a_route(
    tmp_path: Path, launch: Any
) -> None:
    data = bridge_config_dict(tmp_path, None)
    data["routes"] = [{"name": "all", "sinks": ["audit"]}]
    bridge = await launch(data)
    assert await bridge.post("evt_before") == 200

    extra = tmp_path / "support.jsonl"
    bridge.rewrite(
        sinks={**data["sinks"], "support": {"type": "file", "path": str(extra)}},
        routes=[
            {"name": "all", "sinks": ["audit"]},
            {"name": "support", "match": {"inbox_ids": ["inb_demo_support"]}, "sinks": ["support"]},
        ],
    )
    bridge.signal(signal.SIGHUP)
    await bridge.wait_log("config.reloaded")
    assert await bridge.post("evt_after") == 200
    await wait_until(lambda: [line["event_id"] for line in read_lines(extra)] == ["evt_after"])
    audit = tmp_path / "events.jsonl"
    await wait_until(
        lambda: [line["event_id"] for line in read_lines(audit)] == ["evt_before", "evt_after"]
    )
    status = await bridge.status()
    assert status["config"]["last_reload"]["ok"] is True
    assert set(status["sinks"]) == {"audit", "support"}
    assert await bridge.metric("openmail_bridge_config_reloads_total", result="ok") == 1
    assert bridge.process.proc.poll() is None


async def test_sighup_with_an_invalid_config_is_rejected_and_the_old_one_keeps_running(
    tmp_path: Path, launch: Any
) -> None:
    data = bridge_config_dict(tmp_path, None)
    bridge = await launch(data)
    bridge.rewrite(routes=[{"name": "all", "sinks": ["nowhere"]}])
    bridge.signal(signal.SIGHUP)
    await bridge.wait_log("config.reload_rejected")

    rejected = bridge.logged("config.reload_rejected")[0]
    assert rejected["level"] == "error"
    assert any("routes[0] (all).sinks[0]" in problem for problem in rejected["errors"])
    status = await bridge.status()
    assert status["config"]["last_reload"]["ok"] is False
    assert any("no sink named 'nowhere'" in p for p in status["config"]["last_reload"]["errors"])
    assert await bridge.metric("openmail_bridge_config_reloads_total", result="invalid") == 1
    assert (await bridge.admin("/readyz"))[0] == 200

    assert await bridge.post("evt_old_config") == 200  # still routed by the old config
    audit = tmp_path / "events.jsonl"
    await wait_until(lambda: [line["event_id"] for line in read_lines(audit)] == ["evt_old_config"])

    bridge.rewrite(routes=[{"name": "all", "sinks": ["audit"]}])  # fixed: the next SIGHUP takes it
    bridge.signal(signal.SIGHUP)
    await bridge.wait_log("config.reloaded")
    assert (await bridge.status())["config"]["last_reload"]["ok"] is True
    assert await bridge.metric("openmail_bridge_config_reloads_total", result="ok") == 1


async def test_sighup_with_a_changed_webhook_secret_rejects_the_old_one(
    tmp_path: Path, launch: Any
) -> None:
    data = bridge_config_dict(tmp_path, None)
    bridge = await launch(data)
    assert await bridge.post("evt_old_secret") == 200

    new_secret = "whsec-rotated-0004"
    bridge.rewrite(
        openmail={
            **bridge.data["openmail"],
            "webhook": {**bridge.data["openmail"]["webhook"], "secret": new_secret},
        }
    )
    bridge.signal(signal.SIGHUP)
    await bridge.wait_log("config.reloaded")
    assert await bridge.post("evt_signed_with_old", secret=WEBHOOK_SECRET) == 400
    assert await bridge.post("evt_signed_with_new", secret=new_secret) == 200
    assert (
        await bridge.metric("openmail_bridge_webhook_rejected_total", reason="bad_signature") == 1
    )
    # Neither secret reaches the log.
    text = bridge.process.stderr_path.read_text()
    assert new_secret not in text
    assert WEBHOOK_SECRET not in text


async def test_sighup_reopens_file_sinks_after_logrotate(tmp_path: Path, launch: Any) -> None:
    data = bridge_config_dict(tmp_path, None)
    bridge = await launch(data)
    path, rotated = tmp_path / "events.jsonl", tmp_path / "events.jsonl.1"
    assert await bridge.post("evt_first") == 200
    await wait_until(lambda: len(read_lines(path)) == 1)

    path.rename(rotated)  # what logrotate does before it sends SIGHUP
    bridge.signal(signal.SIGHUP)
    await bridge.wait_log("config.reloaded")
    assert await bridge.post("evt_second") == 200
    await wait_until(lambda: [line["event_id"] for line in read_lines(path)] == ["evt_second"])
    assert [line["event_id"] for line in read_lines(rotated)] == ["evt_first"]
    bridge.signal(signal.SIGTERM)
    assert await bridge.exit_code() == 0


async def test_a_second_stop_signal_forces_exit_and_still_closes_the_store(
    tmp_path: Path, receiver: Receiver, launch: Any
) -> None:
    receiver.delay = 3.0  # the drain would wait for it: shutdown_timeout is 10 s
    data = bridge_config_dict(
        tmp_path,
        None,
        shutdown_timeout="10s",
        sinks={"agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET}},
    )
    bridge = await launch(data)
    assert await bridge.post("evt_stuck") == 200
    await wait_until(lambda: len(receiver.received) == 1)

    bridge.signal(signal.SIGTERM)
    await bridge.wait_log("bridge.stopping")
    started = time.monotonic()
    bridge.signal(signal.SIGINT)
    assert await bridge.exit_code() == 0
    assert time.monotonic() - started < 2.0
    actions = [entry["action"] for entry in bridge.logged("bridge.signal")]
    assert actions == ["drain and stop", "force stop"]
    assert "store.closed" in bridge.process.log_events()
    assert await pending_in_store(Path(data["state"]["path"]), "agent") == ["evt_stuck"]


async def test_sigterm_with_a_stdout_nobody_reads_exits_at_shutdown_timeout(
    tmp_path: Path, http: aiohttp.ClientSession, launch: Any
) -> None:
    """The stdout sink's writes block on a full pipe (the test never reads the bridge's stdout):
    the drain gives up at shutdown_timeout and the process exits, keeping what was not written."""
    data = bridge_config_dict(
        tmp_path, None, shutdown_timeout="1s", sinks={"out": {"type": "stdout"}}
    )
    bridge = await launch(data)
    url = f"http://127.0.0.1:{bridge.webhook_port}/webhooks"
    for n in range(60):  # 60 lines of 2 KB: more than a pipe holds
        body = json.dumps(
            {"event": "message.received", "event_id": f"evt_{n}", "inbox_id": "inb_demo_support",
             "message": {"id": f"msg_{n}", "subject": "x" * 2000}}
        ).encode()  # fmt: skip
        async with http.post(url, data=body, headers=signed(body)) as response:
            assert response.status == 200
    status, _ = await bridge.admin("/healthz")
    assert status == 200  # the event loop turns while the writes block
    bridge.signal(signal.SIGTERM)
    assert await bridge.exit_code() == 0
    assert "store.closed" in bridge.process.log_events()
    assert await pending_in_store(Path(data["state"]["path"]), "out")  # kept for the next start
