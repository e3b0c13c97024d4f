"""The supervisor in-process: start order, reverse stop with a drain deadline, atomic reloads, and
the state lock that keeps a second instance out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from conftest import (
    AGENT_SECRET,
    Receiver,
    bridge_config_dict,
    make_config,
    read_lines,
    running_bridge,
    signed,
    wait_until,
)

from bridge.cli.status_text import format_status
from bridge.config import Config, build_config
from bridge.errors import ConfigError, StoreLockedError
from bridge.simulator import Simulator
from bridge.sinks import SINK_TYPES
from bridge.store import Store
from bridge.supervisor import Supervisor
from bridge.systemd import Notifier


def event_body(event_id: str, inbox_id: str = "inb_demo_support") -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": inbox_id,
            "occurred_at": "2026-02-24T10:05:00Z",
            "message": {"id": f"msg_{event_id}", "subject": "hi"},
        }
    ).encode()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post_event(http: aiohttp.ClientSession, sv: Supervisor, event_id: str) -> int:
    assert sv.webhook is not None
    body = event_body(event_id)
    url = f"http://127.0.0.1:{sv.webhook.port}/webhooks"
    async with http.post(url, data=body, headers=signed(body)) as response:
        return response.status


async def admin_get(http: aiohttp.ClientSession, sv: Supervisor, path: str) -> tuple[int, Any]:
    assert sv.admin is not None
    async with http.get(f"http://127.0.0.1:{sv.admin.port}{path}") as response:
        return response.status, await response.json()


def port_is_bound(port: int | None) -> bool:
    assert port
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class RecordingNotifier(Notifier):
    """A Notifier that records what it would tell systemd, and what was true at that moment."""

    def __init__(self) -> None:
        super().__init__(env={})
        self.sent: list[str] = []
        self.supervisor: Supervisor | None = None
        self.at_ready: dict[str, object] = {}

    def ready(self, status: str) -> None:
        sv = self.supervisor
        assert sv is not None
        self.at_ready = {
            "store_open": sv.store.writable,
            "workers_running": all(w._tasks for w in sv.dispatcher.workers.values()),
            "admin_bound": sv.admin is not None and port_is_bound(sv.admin.port),
            "webhook_bound": sv.webhook is not None and port_is_bound(sv.webhook.port),
            "websocket_started": sv.websocket is not None,
        }
        self.sent.append(f"READY {status}")

    def stopping(self) -> None:
        self.sent.append("STOPPING")


# --- start and stop -------------------------------------------------------------------------------


async def test_starts_in_dependency_order_and_is_ready_only_once_listeners_are_bound(
    sim: Simulator, tmp_path: Path
) -> None:
    notifier = RecordingNotifier()
    sv = Supervisor(make_config(tmp_path, sim), notifier=notifier)
    notifier.supervisor = sv
    with structlog.testing.capture_logs() as logs:
        await sv.start()
        try:
            assert notifier.at_ready == {
                "store_open": True,
                "workers_running": True,
                "admin_bound": True,
                "webhook_bound": True,
                "websocket_started": True,
            }
            assert notifier.sent[0].startswith("READY ")
        finally:
            await sv.stop()
    events = [entry["event"] for entry in logs]
    order = ["store.opened", "admin.listening", "webhook.listening", "bridge.started"]
    positions = [events.index(name) for name in order]
    assert positions == sorted(positions), events
    assert events.index("bridge.stopping") > events.index("bridge.started")
    assert events[-1] == "bridge.stopped"
    assert events.index("store.closed") < events.index("bridge.stopped")
    assert notifier.sent[-1] == "STOPPING"


async def test_stops_in_reverse_order_refusing_new_events_while_stopping(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    notifier = RecordingNotifier()
    sv = Supervisor(make_config(tmp_path, sim), notifier=notifier)
    notifier.supervisor = sv
    await sv.start()
    websocket, webhook, admin = sv.websocket, sv.webhook, sv.admin
    assert websocket is not None
    assert webhook is not None
    assert admin is not None
    await wait_until(lambda: websocket.receiving)
    calls: list[str] = []
    seen_while_stopping: dict[str, Any] = {}

    def spy(
        name: str,
        original: Callable[..., Awaitable[None]],
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> Any:
        async def wrapper(*args: object) -> None:
            calls.append(name)
            if before is not None:
                await before()
            await original(*args)

        return wrapper

    async def probe_sources() -> None:
        # The webhook already refuses (503, OpenMail retries) while the WebSocket closes.
        seen_while_stopping["webhook"] = await post_event(http, sv, "evt_during_stop")
        seen_while_stopping["readyz"] = await admin_get(http, sv, "/readyz")

    async def probe_drain() -> None:
        seen_while_stopping["healthz"] = (await admin_get(http, sv, "/healthz"))[0]

    # Each component's own stop still runs; the spies only note the order and probe in between.
    websocket.stop = spy("websocket", websocket.stop, probe_sources)  # type: ignore[method-assign]
    webhook.stop = spy("webhook", webhook.stop)  # type: ignore[method-assign]
    sv.dispatcher.stop = spy("sinks", sv.dispatcher.stop, probe_drain)  # type: ignore[method-assign]
    admin.stop = spy("admin", admin.stop)  # type: ignore[method-assign]
    sv.store.close = spy("store", sv.store.close)  # type: ignore[method-assign]

    await sv.stop()
    assert calls == ["websocket", "webhook", "sinks", "admin", "store"]
    assert notifier.sent[-1] == "STOPPING"
    assert seen_while_stopping["webhook"] == 503
    status, body = seen_while_stopping["readyz"]
    assert status == 503
    assert body["status"] == "unavailable"
    assert body["bridge"] == "stopping"
    assert seen_while_stopping["healthz"] == 200
    await sv.stop()  # a second stop is a no-op
    assert calls == ["websocket", "webhook", "sinks", "admin", "store"]


async def test_stop_drains_in_flight_deliveries_within_shutdown_timeout(
    tmp_path: Path, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay = 0.4  # in flight when the stop begins, done well inside shutdown_timeout
    sinks = {"agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET}}
    config = make_config(tmp_path, None, sinks=sinks, shutdown_timeout="3s")
    sv = Supervisor(config)
    await sv.start()
    assert await post_event(http, sv, "evt_in_flight") == 200
    await wait_until(lambda: len(receiver.received) == 1)
    await sv.stop()
    assert receiver.accepted_ids() == ["evt_in_flight"]
    store = await Store.open(config.state.path)
    try:
        assert await store.pending("agent") == []
    finally:
        await store.close()


async def test_stop_leaves_undelivered_rows_for_the_next_start(
    tmp_path: Path, http: aiohttp.ClientSession, receiver: Receiver
) -> None:
    receiver.delay = 2.0  # slower than shutdown_timeout: cancelled at the deadline, kept
    sinks = {"agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET}}
    config = make_config(tmp_path, None, sinks=sinks, shutdown_timeout="300ms")
    async with running_bridge(config) as sv:
        assert await post_event(http, sv, "evt_slow") == 200
        await wait_until(lambda: len(receiver.received) == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 1.5  # did not wait out the agent
    store = await Store.open(config.state.path)
    try:
        assert [d.event_id for d in await store.pending("agent")] == ["evt_slow"]
    finally:
        await store.close()
    receiver.delay = 0.0
    async with running_bridge(config):
        await wait_until(lambda: "evt_slow" in receiver.accepted_ids())


class GatedProxy:
    """A TCP proxy to the simulator that holds each new connection until ``gate`` is set: the
    bridge sits inside its WebSocket connect for as long as a test wants."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.gate = asyncio.Event()
        self.waiting = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.waiting += 1
        await self.gate.wait()
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_stop_while_the_websocket_is_still_connecting_returns(
    sim: Simulator, tmp_path: Path
) -> None:
    proxy = GatedProxy(sim.port)
    await proxy.start()
    config = make_config(
        tmp_path, sim, openmail={"websocket": {"url": f"ws://127.0.0.1:{proxy.port}/v1/ws"}}
    )
    sv = Supervisor(config)
    await sv.start()
    stopper: asyncio.Task[None] | None = None
    try:
        await wait_until(lambda: proxy.waiting == 1)  # the bridge is inside ws_connect()
        stopper = asyncio.create_task(sv.stop())
        await wait_until(lambda: sv.stopping)
        proxy.gate.set()  # the handshake completes after the stop began
        done, _ = await asyncio.wait([stopper], timeout=3.0)
        assert done, "Supervisor.stop() did not return within 3 s"
    finally:
        await sim.disconnect(1001)  # unsticks a hung stop so the test can clean up
        if stopper is not None:
            await stopper
        await proxy.stop()


async def test_stop_is_safe_before_start() -> None:
    sv = Supervisor(Config(sinks={}))
    await sv.stop()
    assert sv.stopping


# --- reload ---------------------------------------------------------------------------------------


def two_file_sinks(tmp_path: Path, route_to: str, **extra: Any) -> dict[str, Any]:
    data = bridge_config_dict(tmp_path, None, **extra)
    data["sinks"] = {
        "a": {"type": "file", "path": str(tmp_path / "a.jsonl")},
        "b": {"type": "file", "path": str(tmp_path / "b.jsonl")},
    }
    data["routes"] = [{"name": "main", "sinks": [route_to]}]
    return data


def build(tmp_path: Path, data: dict[str, Any]) -> Config:
    return build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})


async def test_reload_swaps_routes_atomically_under_load(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    new = build(tmp_path, two_file_sinks(tmp_path, "b"))
    sv = Supervisor(build(tmp_path, two_file_sinks(tmp_path, "a")), reload_config=lambda: new)
    await sv.start()
    try:
        sent: list[str] = []
        sent_after_reload: list[str] = []  # posted only once reload() had returned
        reloaded = False

        async def flood(prefix: str, count: int) -> None:
            for i in range(count):
                event_id = f"evt_{prefix}_{i}"
                after = reloaded
                assert await post_event(http, sv, event_id) == 200
                sent.append(event_id)
                if after:
                    sent_after_reload.append(event_id)

        floods = [asyncio.create_task(flood(f"w{n}", 40)) for n in range(4)]
        await wait_until(lambda: len(sent) >= 20)
        sent_before_reload = list(sent)
        assert await sv.reload()
        reloaded = True
        await asyncio.gather(*floods)
        assert sent_after_reload, "the flood ended before the reload"

        def delivered(name: str) -> list[str]:
            return [line["event_id"] for line in read_lines(tmp_path / f"{name}.jsonl")]

        await wait_until(lambda: len(delivered("a")) + len(delivered("b")) == len(sent))
        a, b = delivered("a"), delivered("b")
        # Every event went to exactly one route's sink: the old one or the new one, never neither.
        assert sorted(a + b) == sorted(sent)
        assert not set(a) & set(b)
        assert set(sent_before_reload) <= set(a)
        assert set(sent_after_reload) <= set(b)
        assert b"openmail_bridge_events_unrouted_total{" not in sv.metrics.render()
        assert (
            sv.metrics.registry.get_sample_value(
                "openmail_bridge_config_reloads_total", {"result": "ok"}
            )
            == 1
        )
    finally:
        await sv.stop()


async def test_reload_of_a_changed_sink_loses_no_event_in_flight(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A sink whose options change is replaced; events accepted meanwhile reach the new worker."""
    old = two_file_sinks(tmp_path, "a")
    changed = two_file_sinks(tmp_path, "a")
    changed["sinks"]["a"]["format"] = "envelope"
    configs = iter([build(tmp_path, changed), build(tmp_path, old)] * 5)
    sv = Supervisor(build(tmp_path, old), reload_config=lambda: next(configs))
    await sv.start()
    try:
        sent: list[str] = []

        async def flood(prefix: str, count: int) -> None:
            for i in range(count):
                event_id = f"evt_{prefix}_{i}"
                assert await post_event(http, sv, event_id) == 200
                sent.append(event_id)

        floods = [asyncio.create_task(flood(f"w{n}", 60)) for n in range(6)]
        for _ in range(10):
            await asyncio.sleep(0.01)
            assert await sv.reload()
        await asyncio.gather(*floods)

        def delivered() -> set[str]:
            ids = set()
            for line in read_lines(tmp_path / "a.jsonl"):
                ids.add(line["payload"]["event_id"] if "payload" in line else line["event_id"])
            return ids

        await wait_until(lambda: delivered() == set(sent), timeout=5)
    finally:
        await sv.stop()


async def test_invalid_reload_is_reported_and_the_old_config_keeps_running(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    def broken() -> Config:
        raise ConfigError(["sinks.agent.url: not an http(s) URL"])

    config = make_config(tmp_path, None)
    sv = Supervisor(config, reload_config=broken)
    await sv.start()
    try:
        with structlog.testing.capture_logs() as logs:
            assert await sv.reload() is False
        rejected = [e for e in logs if e["event"] == "config.reload_rejected"]
        assert rejected
        assert rejected[0]["errors"] == ["sinks.agent.url: not an http(s) URL"]
        assert rejected[0]["log_level"] == "error"
        assert sv.config is config
        assert (
            sv.metrics.registry.get_sample_value(
                "openmail_bridge_config_reloads_total", {"result": "invalid"}
            )
            == 1
        )
        _, status = await admin_get(http, sv, "/status")
        assert status["config"]["last_reload"]["ok"] is False
        assert status["config"]["last_reload"]["errors"] == ["sinks.agent.url: not an http(s) URL"]
        assert await post_event(http, sv, "evt_still_flowing") == 200
        await wait_until(
            lambda: (
                [line["event_id"] for line in read_lines(tmp_path / "events.jsonl")]
                == ["evt_still_flowing"]
            )
        )
    finally:
        await sv.stop()


async def test_a_reload_that_replaces_a_sink_keeps_what_status_shows_of_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """``delivered`` and ``last_delivered_at`` count since start, as the metrics do, across a
    reload that rebuilds the sink's worker."""
    changed = make_config(tmp_path, None, sinks={"audit": {"format": "envelope"}})
    sv = Supervisor(make_config(tmp_path, None), reload_config=lambda: changed)
    await sv.start()
    try:
        for n in range(3):
            assert await post_event(http, sv, f"evt_before_{n}") == 200
        await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 3)
        _, before = await admin_get(http, sv, "/status")
        old_worker = sv.dispatcher.workers["audit"]

        assert await sv.reload()
        assert sv.dispatcher.workers["audit"] is not old_worker  # the sink's worker was rebuilt
        _, after = await admin_get(http, sv, "/status")
        for key in ("delivered", "last_delivered_at", "last_error"):
            assert after["sinks"]["audit"][key] == before["sinks"]["audit"][key], key
        assert "  audit (file): delivered 3, pending 0, dead 0" in format_status(after, time.time())

        assert await post_event(http, sv, "evt_after") == 200
        await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 4)
        _, st = await admin_get(http, sv, "/status")
        assert st["sinks"]["audit"]["delivered"] == 4
        assert (
            st["sinks"]["audit"]["last_delivered_at"]
            >= before["sinks"]["audit"]["last_delivered_at"]
        )
        metric = sv.metrics.registry.get_sample_value(
            "openmail_bridge_deliveries_total", {"sink": "audit", "outcome": "delivered"}
        )
        assert metric == 4  # /status and the metrics agree
    finally:
        await sv.stop()


async def test_reload_result_names_the_sections_that_wait_for_a_restart(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """A reload applied but for its restart-only parts says so in ``/status`` and ``status``;
    one rejected after it still does (the bridge runs what it ran); a reload back to the running
    config needs none."""
    original = make_config(tmp_path, None)
    elsewhere = make_config(
        tmp_path,
        None,
        state={"path": str(tmp_path / "state9" / "bridge.db")},
        openmail={"webhook": {"listen": "127.0.0.1:1"}},
    )

    def rejected() -> Config:
        raise ConfigError(["sinks.agent.url: not an http(s) URL"])

    loads = iter([lambda: elsewhere, rejected, lambda: original])
    sv = Supervisor(original, reload_config=lambda: next(loads)())
    await sv.start()
    try:

        async def last_reload() -> tuple[dict[str, Any], str]:
            _, st = await admin_get(http, sv, "/status")
            [line] = [x for x in format_status(st, time.time()).splitlines() if "last reload" in x]
            return st["config"]["last_reload"], line

        with structlog.testing.capture_logs() as logs:
            assert await sv.reload()
        logged = [e["section"] for e in logs if e["event"] == "config.restart_needed"]
        result, line = await last_reload()
        assert result["result"] == "ok"
        assert result["restart_needed"] == logged
        assert logged[0] == "state"
        assert logged[1].startswith("openmail.webhook.")
        assert "listen" in logged[1]
        assert len(logged) == 2
        assert line.endswith(f": applied; RESTART NEEDED for state, {logged[1]}")

        assert await sv.reload() is False
        result, line = await last_reload()
        assert (result["result"], result["restart_needed"]) == ("rejected", logged)
        assert "REJECTED" in line
        assert line.endswith(f"; RESTART NEEDED for state, {logged[1]}")

        assert await sv.reload()
        result, line = await last_reload()
        assert (result["result"], result["restart_needed"]) == ("ok", [])
        assert line.endswith(": applied")
    finally:
        await sv.stop()


async def test_reload_reopens_file_sinks_even_when_the_new_config_is_invalid(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """logrotate sends SIGHUP after moving the file; a config mid-edit must not stop the reopen."""

    def broken() -> Config:
        raise ConfigError(["routes[0].sinks[0]: no sink named 'gone'"])

    sv = Supervisor(make_config(tmp_path, None), reload_config=broken)
    await sv.start()
    try:
        path = tmp_path / "events.jsonl"
        assert await post_event(http, sv, "evt_before") == 200
        await wait_until(lambda: len(read_lines(path)) == 1)
        path.rename(tmp_path / "events.jsonl.1")
        assert await sv.reload() is False
        assert await post_event(http, sv, "evt_after") == 200
        await wait_until(lambda: [line["event_id"] for line in read_lines(path)] == ["evt_after"])
        assert [line["event_id"] for line in read_lines(tmp_path / "events.jsonl.1")] == [
            "evt_before"
        ]
    finally:
        await sv.stop()


# --- the state lock -------------------------------------------------------------------------------


async def test_second_instance_on_the_same_state_fails_with_store_locked_error(
    sim: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = make_config(tmp_path, sim)
    async with running_bridge(config) as first:
        second = Supervisor(config)
        with pytest.raises(StoreLockedError, match="in use by another openmail-bridge"):
            await second.start()
        assert second.admin is None
        assert second.webhook is None
        assert second.websocket is None
        assert second.stopping
        # The first one is untouched.
        websocket = first.websocket
        assert websocket is not None
        await wait_until(lambda: websocket.receiving)
        assert (await admin_get(http, first, "/readyz"))[1]["status"] == "ready"
        assert await post_event(http, first, "evt_first_still_works") == 200
