"""The WebSocket source against the OpenMail simulator, and a tiny scripted server for what the
simulator never sends (garbage frames, silence)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import WSMsgType, web
from conftest import (
    RecordingSpool,
    events_named,
    make_config,
    read_lines,
    running_bridge,
    stored_ids,
    wait_until,
    websocket_of,
)

from bridge.backoff import ReconnectPolicy
from bridge.config import Config
from bridge.events import Event, Origin
from bridge.metrics import Metrics
from bridge.simulator import DEMO_API_KEY, Simulator
from bridge.sources.websocket import WebSocketSource
from bridge.store import Store
from bridge.supervisor import Supervisor

STRICT_FILE_SINK = {"audit": {"type": "file", "ordering": "strict"}}
ROUTE_ALL = [{"name": "all", "sinks": ["audit"]}]


# --- helpers -------------------------------------------------------------------------------------


def sample(sup: Supervisor, name: str, **labels: str) -> float:
    value = sup.metrics.registry.get_sample_value(f"openmail_bridge_{name}", labels)
    return 0.0 if value is None else value


def ws_config(tmp_path: Path, sim: Simulator, **overrides: Any) -> Config:
    overrides.setdefault("routes", ROUTE_ALL)
    return make_config(tmp_path, sim, **overrides)


def subscribed_connections(sim: Simulator) -> int:
    return sum(c.subscribed for c in sim.connections)


def iso_ago(seconds: float) -> str:
    moment = datetime.now(UTC) - timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def go_down(sim: Simulator, *, code: int = 1001) -> None:
    """Drop the WebSocket and refuse reconnects until ``sim.refuse(0)``."""
    sim.refuse(3600)
    await sim.disconnect(code)


class Sleeps:
    """A reconnect sleep that records each delay and returns at once, until ``count`` delays
    were asked for: then ``enough`` is set and the loop holds there until the source stops."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.asked: list[float] = []
        self.enough = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        if len(self.asked) >= self.count:
            self.enough.set()
            await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def direct_source(config: Config, sleeps: Sleeps) -> AsyncIterator[WebSocketSource]:
    """A WebSocketSource on its own, with an injected reconnect sleep, handing events to a
    recording spool."""
    policy = ReconnectPolicy(config.openmail.websocket.reconnect, sleep=sleeps)
    source = WebSocketSource(config.openmail, Metrics(), policy=policy)
    await source.start(RecordingSpool())
    try:
        yield source
    finally:
        await source.stop()


# --- a scripted WebSocket server -----------------------------------------------------------------

Script = Callable[[web.WebSocketResponse, int], Awaitable[None]]


class ScriptedServer:
    """Answers ``subscribe`` with ``subscribed`` (after ``before_subscribed`` frames), then runs
    ``script(ws, connection_number)``; answers protocol pings only when ``answer_pings``."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        before_subscribed: tuple[str | bytes, ...] = (),
        autoping: bool = True,
        answer_pings: bool = True,
        answer_subscribe: bool = True,
    ) -> None:
        self.script = script
        self.answer_subscribe = answer_subscribe
        self.before_subscribed = before_subscribed
        self.autoping = autoping
        self.answer_pings = answer_pings
        self.connections = 0
        self.closed = 0
        self.pings = 0
        self.subscribes: list[dict[str, Any]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=self.autoping)
        await ws.prepare(request)
        self.connections += 1
        number = self.connections
        with contextlib.suppress(ConnectionResetError):  # the bridge may leave mid-script
            await self._serve(ws, number)
        self.closed += 1
        return ws

    async def _serve(self, ws: web.WebSocketResponse, number: int) -> None:
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data.get("type") == "subscribe":
                self.subscribes.append(data)
                if not self.answer_subscribe:
                    continue
                for frame in self.before_subscribed:
                    await (ws.send_bytes(frame) if isinstance(frame, bytes) else ws.send_str(frame))
                await ws.send_str(
                    json.dumps({"type": "subscribed", "inbox_ids": [], "event_types": []})
                )
                if self.script is not None:
                    await self.script(ws, number)
            elif data.get("type") == "ping" and self.answer_pings:
                self.pings += 1
                await ws.send_str('{"type":"pong"}')

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/ws", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"ws://127.0.0.1:{port}/v1/ws"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def scripted(server: ScriptedServer) -> AsyncIterator[ScriptedServer]:
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def scripted_config(tmp_path: Path, server: ScriptedServer, **websocket: Any) -> Config:
    ws = {"enabled": True, "url": server.url, **websocket}
    return make_config(tmp_path, routes=ROUTE_ALL, openmail={"websocket": ws})


def event_frame(event_id: str) -> str:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "occurred_at": iso_ago(0),
            "inbox_id": "inb_demo_support",
            "thread_id": "thr_1",
            "message": {
                "id": "msg_1",
                "from": "a@example.com",
                "to": "s@openmail.sh",
                "subject": "hi",
                "body_text": "hello",
                "attachments": [],
            },
        }
    )


# --- events --------------------------------------------------------------------------------------


async def test_events_are_stored_once_each_in_order(sim: Simulator, tmp_path: Path) -> None:
    config = ws_config(tmp_path, sim, sinks=STRICT_FILE_SINK)
    async with running_bridge(config) as sup:
        await wait_until(lambda: sup.websocket is not None and sup.websocket.receiving)
        ids = [await sim.inject() for _ in range(30)]
        lines = tmp_path / "events.jsonl"
        await wait_until(lambda: len(read_lines(lines)) >= 30)
        assert [line["event_id"] for line in read_lines(lines)] == ids
        assert stored_ids(config.state.path) == set(ids)
        assert sup.store is not None
        assert sup.store.cursor == ids[-1]
        assert sample(sup, "events_received_total", source="websocket") == 30
        assert sample(sup, "events_duplicate_total", source="websocket") == 0


async def test_bridge_subscribes_with_configured_filters(sim: Simulator, tmp_path: Path) -> None:
    config = ws_config(
        tmp_path,
        sim,
        openmail={
            "websocket": {"inbox_ids": ["inb_demo_sales"], "event_types": ["message.received"]}
        },
    )
    async with running_bridge(config) as sup:
        await wait_until(lambda: sup.websocket is not None and sup.websocket.receiving)
        (conn,) = sim.connections
        assert conn.inbox_ids == ("inb_demo_sales",)
        assert conn.event_types == ("message.received",)
        assert conn.auth == "header"  # Bearer, not ?token=


async def test_reconnect_sends_cursor_and_replay_fills_the_gap(
    sim: Simulator, tmp_path: Path
) -> None:
    config = ws_config(tmp_path, sim)
    async with running_bridge(config) as sup:
        assert sup.websocket is not None
        assert sup.store is not None
        await wait_until(lambda: websocket_of(sup).receiving)
        before = [await sim.inject() for _ in range(3)]
        await wait_until(lambda: sup.store.cursor == before[-1])
        await go_down(sim)
        await wait_until(lambda: not websocket_of(sup).receiving)
        gap = [await sim.inject() for _ in range(5)]  # no WebSocket, no webhook: only in history
        sim.refuse(0)
        await wait_until(lambda: stored_ids(config.state.path) == set(before + gap))
        # The simulator replayed exactly the events after the cursor: it got the right one.
        assert [d.event_id for d in sim.deliveries if d.replay] == gap
        # The event loop's copy of the cursor follows the commit that the rows show.
        await wait_until(lambda: sup.store.cursor == gap[-1])
        live = await sim.inject()
        await wait_until(lambda: live in stored_ids(config.state.path))


async def test_cursor_survives_a_restart(sim: Simulator, tmp_path: Path) -> None:
    config = ws_config(tmp_path, sim)
    async with running_bridge(config) as sup:
        await wait_until(lambda: sup.websocket is not None and sup.websocket.receiving)
        first = [await sim.inject() for _ in range(3)]
        await wait_until(lambda: sup.store.cursor == first[-1])
    missed = [await sim.inject() for _ in range(4)]  # while no bridge runs
    async with running_bridge(config) as sup:
        await wait_until(lambda: stored_ids(config.state.path) == set(first + missed))
        assert [d.event_id for d in sim.deliveries if d.replay] == missed


async def test_unknown_cursor_is_cleared_and_resubscribed_with_a_warning(
    sim: Simulator, tmp_path: Path
) -> None:
    config = ws_config(tmp_path, sim)
    store = await Store.open(config.state.path)  # a cursor from an account the simulator never saw
    foreign = Event(
        event_id="evt_from_elsewhere",
        type="message.received",
        inbox_id="inb_x",
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBSOCKET,
        received_at=time.time(),
        raw=b"{}",
    )
    await store.accept(foreign, ())
    assert store.cursor == "evt_from_elsewhere"
    await store.close()
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.websocket is not None
            assert sup.store is not None
            await wait_until(lambda: websocket_of(sup).receiving, timeout=5)
            assert sup.store.cursor is None
            live = await sim.inject()
            await wait_until(lambda: live in stored_ids(config.state.path))
            assert sup.websocket.possible_gaps == 1
            assert sample(sup, "possible_gaps_total", reason="cursor_reset") == 1
    (warning,) = events_named(logs, "ws.cursor_reset")
    assert warning["log_level"] == "warning"
    assert warning["cursor"] == "evt_from_elsewhere"
    assert "missed" in warning["hint"]
    (connected,) = events_named(logs, "ws.connected")
    assert connected["cursor"] is None  # resubscribed without it


async def test_replay_hitting_the_limit_warns_and_counts(sim: Simulator, tmp_path: Path) -> None:
    config = ws_config(tmp_path, sim)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.websocket is not None
            await wait_until(lambda: websocket_of(sup).receiving)
            first = await sim.inject()
            await wait_until(lambda: sup.store.cursor == first)
            await go_down(sim)
            # Events that happened a minute ago, while the bridge was away; no webhook is set, so
            # the simulator records each as failed and keeps it for replay.
            gap = [await sim.inject(occurred_at=iso_ago(60)) for _ in range(110)]
            assert all(d.channel == "failed" for d in sim.deliveries if d.event_id in gap)
            sim.refuse(0)
            # The first replay stops at 100; the bridge asks for the page after the 100th.
            await wait_until(lambda: len(stored_ids(config.state.path)) == 111)
            assert stored_ids(config.state.path) == {first, *gap}
            assert sup.websocket.possible_gaps == 1
            assert sample(sup, "possible_gaps_total", reason="replay_limit") == 1
    (warning,) = events_named(logs, "ws.replay_limit")
    assert warning["log_level"] == "warning"
    assert warning["limit"] == 100
    (page,) = events_named(logs, "ws.replay_next_page")
    assert page["after"] == gap[99]
    replays = [d for d in sim.deliveries if d.replay and d.event_id in gap]
    assert [d.event_id for d in replays] == gap


async def test_replay_under_the_limit_does_not_warn(sim: Simulator, tmp_path: Path) -> None:
    config = ws_config(tmp_path, sim)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.websocket is not None
            await wait_until(lambda: websocket_of(sup).receiving)
            first = await sim.inject()
            await wait_until(lambda: sup.store.cursor == first)
            await go_down(sim)
            gap = [await sim.inject(occurred_at=iso_ago(60)) for _ in range(99)]
            sim.refuse(0)
            await wait_until(lambda: stored_ids(config.state.path) == {first, *gap})
            assert sup.websocket.possible_gaps == 0
    assert events_named(logs, "ws.replay_limit") == []


# --- rejections ----------------------------------------------------------------------------------


async def test_subscribe_rejected_for_unowned_inbox(sim: Simulator, tmp_path: Path) -> None:
    inboxes = ["inb_demo_support", "inb_not_ours"]
    config = ws_config(
        tmp_path, sim, openmail={"websocket": {"inbox_ids": inboxes, "reconnect": {"max": "1s"}}}
    )
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.websocket is not None
            assert sup.webhook is not None
            await wait_until(lambda: len(events_named(logs, "ws.rejected")) == 1)
            assert sup.websocket.state == "down"
            assert sup.readiness()[0] == "degraded"  # the webhook listener still runs
    (error,) = events_named(logs, "ws.rejected")
    assert error["log_level"] == "error"
    assert error["cause"] == "subscribe_rejected"
    assert str(inboxes) in error["reason"]  # names the configured inbox ids
    assert "inbox_ids" in error["hint"]


@pytest.mark.parametrize("auth_failure", ["close", "http"])
async def test_rejected_key_backs_off_at_the_cap(tmp_path: Path, auth_failure: str) -> None:
    """A key OpenMail refuses: the source stays up, retries about once per ``reconnect.max``,
    logs one ERROR naming the cause and a WARNING per attempt after that."""
    sim = Simulator(api_key="om_test_someone_else_0000", auth_failure=auth_failure)  # type: ignore[arg-type]
    await sim.start()
    sleeps = Sleeps(4)
    try:
        config = ws_config(
            tmp_path, sim, openmail={"websocket": {"reconnect": {"initial": "50ms", "max": "1s"}}}
        )
        with structlog.testing.capture_logs() as logs:
            async with direct_source(config, sleeps) as source:
                await asyncio.wait_for(sleeps.enough.wait(), timeout=10)
                attempts = len(events_named(logs, "sim.ws.rejected"))
                assert source.state == "down"
                assert not source.receiving
                assert source.status()["reason"] == (
                    "upgrade refused with HTTP 401"
                    if auth_failure == "http"
                    else "the API key was rejected"
                )
    finally:
        await sim.stop()
    assert attempts == len(sleeps.asked) == 4  # one sleep after each refused attempt
    assert all(0.8 <= delay <= 1.0 for delay in sleeps.asked), sleeps.asked  # at the cap
    bridge_logs = [e for e in logs if e["event"] in ("ws.rejected", "ws.retrying")]
    assert bridge_logs[0]["event"] == "ws.rejected"
    assert bridge_logs[0]["log_level"] == "error"
    assert bridge_logs[0]["cause"] == "key_rejected"
    assert "api_key" in bridge_logs[0]["hint"]
    assert "by webhook meanwhile" in bridge_logs[0]["hint"]  # the listener is enabled here
    assert len(events_named(logs, "ws.rejected")) == 1
    assert all(e["log_level"] == "warning" for e in bridge_logs[1:])
    assert len(bridge_logs) == attempts
    assert all(DEMO_API_KEY not in json.dumps(e, default=str) for e in logs)


async def test_a_rejected_key_promises_no_webhook_when_the_listener_is_off(tmp_path: Path) -> None:
    sim = Simulator(api_key="om_test_someone_else_0000")
    await sim.start()
    sleeps = Sleeps(1)
    try:
        config = ws_config(tmp_path, sim, openmail={"webhook": {"enabled": False}})
        with structlog.testing.capture_logs() as logs:
            async with direct_source(config, sleeps):
                await asyncio.wait_for(sleeps.enough.wait(), timeout=10)
    finally:
        await sim.stop()
    (error,) = events_named(logs, "ws.rejected")
    assert "api_key" in error["hint"]
    assert "webhook" not in error["hint"]


async def test_a_rejected_key_leaves_the_bridge_up_but_degraded(tmp_path: Path) -> None:
    sim = Simulator(api_key="om_test_someone_else_0000")
    await sim.start()
    try:
        config = ws_config(
            tmp_path, sim, openmail={"websocket": {"reconnect": {"initial": "50ms", "max": "1s"}}}
        )
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(config) as sup:
                await wait_until(lambda: len(events_named(logs, "ws.rejected")) == 1)
                assert sup.websocket is not None
                assert sup.websocket.state == "down"
                assert sup.readiness()[0] == "degraded"
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def account_connection_taken() -> AsyncIterator[Simulator]:
    """A simulator that allows the account one connection, which another client holds."""
    sim = Simulator(max_connections=1)
    await sim.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(sim.ws_url, headers={"Authorization": f"Bearer {DEMO_API_KEY}"}),
        ):
            await wait_until(lambda: len(sim.connections) == 1)
            yield sim
    finally:
        await sim.stop()


async def test_too_many_connections_backs_off_at_the_cap(tmp_path: Path) -> None:
    sleeps = Sleeps(3)
    async with account_connection_taken() as sim:
        config = ws_config(
            tmp_path,
            sim,
            openmail={"websocket": {"reconnect": {"initial": "50ms", "max": "1s"}}},
        )
        with structlog.testing.capture_logs() as logs:
            async with direct_source(config, sleeps) as source:
                await asyncio.wait_for(sleeps.enough.wait(), timeout=10)
                assert not source.receiving
    rejected = [e for e in events_named(logs, "sim.ws.rejected") if e.get("code") == 4008]
    assert len(rejected) == len(sleeps.asked) == 3
    assert all(0.8 <= delay <= 1.0 for delay in sleeps.asked), sleeps.asked  # at the cap
    (error,) = events_named(logs, "ws.rejected")
    assert error["log_level"] == "error"
    assert error["cause"] == "too_many_connections"
    assert error["close_code"] == 4008
    assert len(events_named(logs, "ws.retrying")) == len(rejected) - 1


async def test_revoked_key_on_open_connection_logs_error_once(
    sim: Simulator, tmp_path: Path
) -> None:
    config = ws_config(tmp_path, sim)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.websocket is not None
            await wait_until(lambda: websocket_of(sup).receiving)
            sim.rotate_api_key("om_test_rotated_0000")
            await wait_until(lambda: len(events_named(logs, "ws.retrying")) >= 1)
            assert sup.readiness()[0] == "degraded"
    (error,) = events_named(logs, "ws.rejected")
    assert (error["log_level"], error["cause"], error["close_code"]) == (
        "error",
        "key_rejected",
        4001,
    )


# --- transient closes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "abrupt", "min_wait"),
    [
        pytest.param(1001, False, 0.0, id="1001-going-away"),
        # 4029 backs off at least min(reconnect.max, 8 * reconnect.initial) = 0.3 s here.
        pytest.param(4029, False, 0.3, id="4029-rate-limited"),
        pytest.param(1006, True, 0.0, id="1006-abrupt"),
    ],
)
async def test_transient_close_reconnects(
    sim: Simulator, tmp_path: Path, code: int, abrupt: bool, min_wait: float
) -> None:
    config = ws_config(tmp_path, sim)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.websocket is not None
            await wait_until(lambda: websocket_of(sup).receiving)
            before = await sim.inject()
            await sim.disconnect(code, abrupt=abrupt)
            await wait_until(lambda: len(events_named(logs, "ws.connected")) == 2)
            after = await sim.inject()
            await wait_until(lambda: stored_ids(config.state.path) == {before, after})
            assert sup.readiness()[0] == "ready"
    (down,) = events_named(logs, "ws.disconnected")
    assert down["close_code"] == code
    assert down["retry_in"] >= min_wait
    assert events_named(logs, "ws.rejected") == []


async def test_readiness_is_degraded_while_the_websocket_is_down(
    sim: Simulator, tmp_path: Path
) -> None:
    config = ws_config(tmp_path, sim)
    async with running_bridge(config) as sup:
        assert sup.websocket is not None
        await wait_until(lambda: sup.readiness()[0] == "ready")
        await go_down(sim)
        await wait_until(lambda: sup.readiness()[0] == "degraded")
        _, parts = sup.readiness()
        assert parts["webhook"] == "listening"
        assert parts["websocket"] != "subscribed"
        sim.refuse(0)
        await wait_until(lambda: sup.readiness()[0] == "ready")


# --- frames the simulator never sends ------------------------------------------------------------


async def test_bad_frames_are_counted_never_fatal(tmp_path: Path) -> None:
    async def script(ws: web.WebSocketResponse, number: int) -> None:
        await ws.send_str("this is not json")
        await ws.send_bytes(b"\x00\x01binary")
        await ws.send_str('{"type": "surprise"}')
        await ws.send_str("[1, 2, 3]")
        await ws.send_str('{"neither": "type nor event"}')
        await ws.send_str('{"event": "message.received"}')  # no event_id
        await ws.send_str('{"event": "message.received", "event_id": 42}')
        for _ in range(3):  # the server's own errors: logged once a minute at most too
            await ws.send_str('{"type": "error", "message": "something odd"}')
        await ws.send_str(event_frame("evt_good"))

    server = ScriptedServer(script, before_subscribed=("garbage before subscribed", b"\xff"))
    async with scripted(server):
        config = scripted_config(tmp_path, server)
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(config) as sup:
                await wait_until(lambda: stored_ids(config.state.path) == {"evt_good"})
                assert sup.websocket is not None
                assert sup.websocket.state == "subscribed"
                counts = {
                    r: sample(sup, "websocket_frames_invalid_total", reason=r)
                    for r in ("not_json", "binary", "unknown_type", "bad_event")
                }
        assert server.connections == 1  # never reconnected over any of it
    assert counts == {"not_json": 4, "binary": 2, "unknown_type": 1, "bad_event": 2}
    # Every frame is counted; the log says it once a minute at most, however many arrive.
    assert len(events_named(logs, "ws.frame_ignored")) == 1
    assert all(e["log_level"] == "warning" for e in events_named(logs, "ws.frame_ignored"))
    assert len(events_named(logs, "ws.server_error")) == 1


async def test_an_event_before_subscribed_is_kept_and_stored_first(tmp_path: Path) -> None:
    """Were OpenMail to apply a subscribe before confirming it, events could precede
    'subscribed'; they are live events no replay brings again, so they are kept, in order."""

    async def script(ws: web.WebSocketResponse, number: int) -> None:
        await ws.send_str(event_frame("evt_after"))

    server = ScriptedServer(script, before_subscribed=(event_frame("evt_early"),))
    async with scripted(server):
        config = scripted_config(tmp_path, server)
        async with running_bridge(config):
            await wait_until(lambda: stored_ids(config.state.path) == {"evt_early", "evt_after"})
        lines = read_lines(tmp_path / "events.jsonl")
    assert [line["event_id"] for line in lines] == ["evt_early", "evt_after"]


async def test_oversized_frame_drops_the_connection_not_the_daemon(tmp_path: Path) -> None:
    async def script(ws: web.WebSocketResponse, number: int) -> None:
        await ws.send_str(
            event_frame("evt_big") + " " * 4096 if number == 1 else event_frame("evt_ok")
        )

    server = ScriptedServer(script)
    async with scripted(server):
        config = make_config(
            tmp_path,
            routes=ROUTE_ALL,
            openmail={
                "websocket": {"enabled": True, "url": server.url},
                "webhook": {"max_body": "2KiB"},
            },
        )
        async with running_bridge(config):
            await wait_until(lambda: "evt_ok" in stored_ids(config.state.path))
        assert server.connections == 2
        assert "last_event_id" not in server.subscribes[1]  # the big one was never taken
        assert stored_ids(config.state.path) == {"evt_ok"}


async def test_no_subscribed_within_the_timeout_reconnects(tmp_path: Path) -> None:
    server = ScriptedServer(answer_subscribe=False)
    async with scripted(server):
        config = scripted_config(tmp_path, server, subscribe_timeout="500ms")
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(config) as sup:
                await wait_until(lambda: len(server.subscribes) >= 2, timeout=5)
                assert sup.websocket is not None
                assert not sup.websocket.receiving
    (down, *_) = events_named(logs, "ws.disconnected")
    assert "no 'subscribed' within 0.5s" in down["reason"]
    assert events_named(logs, "ws.connected") == []


async def test_silent_server_that_ignores_pings_is_left(tmp_path: Path) -> None:
    """Neither WebSocket pongs nor protocol pongs: the bridge gives up on it and reconnects."""
    server = ScriptedServer(autoping=False, answer_pings=False)
    async with scripted(server):
        config = scripted_config(tmp_path, server, ping_interval="300ms", stale_after="1s")
        async with running_bridge(config):
            await wait_until(lambda: server.connections >= 2 and server.closed >= 1, timeout=5)


async def test_stale_connection_watchdog_reconnects(tmp_path: Path) -> None:
    """The server answers WebSocket pings (the transport looks alive) but never the protocol's
    ``ping`` and sends nothing: the stale watchdog closes and reconnects."""
    server = ScriptedServer(autoping=True, answer_pings=False)
    async with scripted(server):
        config = scripted_config(tmp_path, server, ping_interval="300ms", stale_after="1s")
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(config):
                await wait_until(lambda: server.connections >= 2, timeout=5)
    (stale, *_) = events_named(logs, "ws.stale")
    assert stale["log_level"] == "warning"
    assert stale["silent_for"] == 1.0


async def test_answered_pings_keep_an_idle_connection(tmp_path: Path) -> None:
    server = ScriptedServer(autoping=True, answer_pings=True)
    async with scripted(server):
        config = scripted_config(tmp_path, server, ping_interval="200ms", stale_after="800ms")
        async with running_bridge(config) as sup:
            await wait_until(lambda: server.connections == 1)
            # Nine answered pings, 200 ms apart: idle for more than twice stale_after.
            await wait_until(lambda: server.pings >= 9, timeout=5)
            assert server.connections == 1
            assert sup.websocket is not None
            assert sup.websocket.receiving
