"""``GET /api/stream`` (Server-Sent Events) and ``GET /api/throughput`` over real sockets: a real
bridge fed by the OpenMail simulator over its WebSocket, read with an aiohttp client; the handlers
on their own server where a test needs a short keepalive or a small queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import (
    AGENT_SECRET,
    Receiver,
    make_config,
    running_bridge,
    wait_until,
    websocket_of,
)

from bridge import admin as admin_module
from bridge import logs
from bridge.activity import Activity, ActivityFeed, Kind
from bridge.simulator import Simulator
from bridge.stream import MAX_STREAMS, activity_stream, throughput
from bridge.supervisor import Supervisor

ROUTE_ALL = [{"name": "all", "sinks": ["audit"]}]
TOKEN = "admin-token-stream-0004"


class SseReader:
    """Reads Server-Sent Events off a response, written from the SSE format independently of the
    bridge's own client (``bridge.cli.tail``)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.comments: list[str] = []

    async def line(self) -> str | None:
        """The next line, comments noted; None at the end of the stream."""
        raw = await self.response.content.readline()
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
        return line

    async def next(self) -> tuple[str, Any] | None:
        """The next (event name, decoded JSON data); None at the end of the stream."""
        name, data = "message", []
        while True:
            line = await self.line()
            if line is None:
                return None
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data.append(line.removeprefix("data: "))
            elif line == "" and data:
                return name, json.loads("\n".join(data))

    async def records(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The next ``count`` activity records."""
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                item = await self.next()
                assert item is not None, f"the stream ended after {found}"
                if item[0] == "activity":
                    found.append(item[1])
        return found


@contextlib.asynccontextmanager
async def stream(
    base: str, headers: dict[str, str] | None = None, **query: str
) -> AsyncIterator[SseReader]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/api/stream", params=query, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"] == "text/event-stream"
        yield SseReader(response)


@pytest.fixture
async def bridge(sim: Simulator, tmp_path: Path) -> AsyncIterator[tuple[Supervisor, str]]:
    """A bridge subscribed to the simulator's WebSocket, every event routed to a file sink."""
    async with running_bridge(make_config(tmp_path, sim, routes=ROUTE_ALL)) as sv:
        await wait_until(lambda: websocket_of(sv).receiving)
        assert sv.admin is not None
        yield sv, f"http://127.0.0.1:{sv.admin.port}"


# --- through a real bridge ---------------------------------------------------------------------


async def test_a_stream_and_a_kept_alive_connection_outlive_the_header_timeout(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The header timer covers a request's headers only: not a response that streams for hours,
    nor the pause between two requests of a kept-alive connection (a scraper's)."""
    monkeypatch.setattr(admin_module, "HEADER_TIMEOUT", 0.3)
    async with running_bridge(make_config(tmp_path, sim, routes=ROUTE_ALL)) as sv:
        await wait_until(lambda: websocket_of(sv).receiving)
        assert sv.admin is not None
        port = sv.admin.port
        async with stream(f"http://127.0.0.1:{port}") as reader:
            kept_reader, kept = await asyncio.open_connection("127.0.0.1", port)
            request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            kept.write(request)
            assert (await kept_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            # A socket opened after both and sending nothing is cut once its timer fires: by
            # then the stream's and the kept connection's would have fired too.
            idle_reader, idle = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(5):
                assert await idle_reader.read() == b""
            idle.close()
            sent = await sim.inject()
            records = await reader.records(2)
            assert {r["event_id"] for r in records} == {sent}
            await kept_reader.read(64 * 1024)  # the rest of the first answer, then ask again
            kept.write(request)
            async with asyncio.timeout(5):
                assert (await kept_reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            kept.close()


async def test_the_stream_shows_events_accepted_then_delivered(
    bridge: tuple[Supervisor, str], sim: Simulator
) -> None:
    sv, base = bridge
    async with stream(base) as reader:  # open (headers in) before any record
        sent = [await sim.inject(inbox_id="inb_demo_support") for _ in range(3)]
        records = await reader.records(6)
    for event_id in sent:
        mine = [r for r in records if r["event_id"] == event_id]
        assert [(r["kind"], r["sink"]) for r in mine] == [
            ("accepted", None),
            ("delivered", "audit"),
        ]
        accepted, delivered = mine
        assert accepted["source"] == delivered["source"] == "websocket"
        assert accepted["inbox_id"] == "inb_demo_support"
        assert accepted["type"] == "message.received"
        assert delivered["attempt"] == 1
        assert accepted["error"] is None
        assert accepted["ts"] <= delivered["ts"] <= time.time()
        assert list(accepted) == [
            "ts", "kind", "event_id", "source", "inbox_id", "type", "sink", "attempt", "error",
        ]  # fmt: skip
    # The reader left: the next write (a record, else the keepalive) fails and unsubscribes it.
    assert sv.activity.subscribers == 1
    await sim.inject()
    await wait_until(lambda: sv.activity.subscribers == 0)


async def test_a_replayed_event_shows_as_a_duplicate(
    bridge: tuple[Supervisor, str], sim: Simulator
) -> None:
    sv, base = bridge
    event_id = await sim.inject()
    await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 1)
    async with stream(base) as reader:
        await sim.inject({**sim.events[-1]})  # the same event again, as a replay brings it
        (record,) = await reader.records(1)
    assert (record["kind"], record["event_id"], record["sink"]) == ("duplicate", event_id, None)


async def test_retries_and_dead_letters_show_with_their_attempt_and_error(
    sim: Simulator, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.statuses = [503, 400]  # one retry, then refused for good
    agent = {"type": "http", "url": receiver.url, "secret": AGENT_SECRET,
             "retry": {"initial": "20ms", "max": "50ms"}}  # fmt: skip
    config = make_config(
        tmp_path, sim, sinks={"agent": agent}, routes=[{"name": "all", "sinks": ["agent"]}]
    )
    async with running_bridge(config) as sv:
        await wait_until(lambda: websocket_of(sv).receiving)
        assert sv.admin is not None
        async with stream(f"http://127.0.0.1:{sv.admin.port}", sink="agent") as reader:
            event_id = await sim.inject()
            retrying, dead = await reader.records(2)
        assert [r["event_id"] for r in (retrying, dead)] == [event_id, event_id]
        assert (retrying["kind"], retrying["attempt"]) == ("retrying", 1)
        assert (dead["kind"], dead["attempt"]) == ("dead", 2)
        assert "503" in retrying["error"]
        assert "400" in dead["error"]
        # What the stream said is what the store holds: the dead letter is recorded already.
        (letter,) = await sv.store.dlq_list(sink="agent")
        assert letter.delivery.event_id == event_id


async def test_the_stream_filters_by_query(bridge: tuple[Supervisor, str], sim: Simulator) -> None:
    _, base = bridge
    async with (
        stream(base, inbox="inb_demo_sales") as by_inbox,
        stream(base, sink="audit") as by_sink,
    ):
        support = await sim.inject(inbox_id="inb_demo_support")
        sales = await sim.inject(inbox_id="inb_demo_sales")
        inbox_records = await by_inbox.records(2)
        sink_records = await by_sink.records(2)
    assert [(r["kind"], r["event_id"]) for r in inbox_records] == [
        ("accepted", sales),
        ("delivered", sales),
    ]
    assert sorted((r["kind"], r["event_id"], r["sink"]) for r in sink_records) == sorted(
        [("delivered", support, "audit"), ("delivered", sales, "audit")]
    )


async def test_an_unknown_filter_is_a_bad_request(bridge: tuple[Supervisor, str]) -> None:
    _, base = bridge
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/api/stream", params={"inbox_id": "x"}) as response,
    ):
        assert response.status == 400
        assert "unknown filter inbox_id" in (await response.json())["error"]


async def test_at_most_32_streams_at_once(bridge: tuple[Supervisor, str], sim: Simulator) -> None:
    sv, base = bridge
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(MAX_STREAMS):
            await streams.enter_async_context(stream(base))
        assert sv.activity.subscribers == MAX_STREAMS
        async with aiohttp.ClientSession() as http, http.get(f"{base}/api/stream") as response:
            assert response.status == 503
            assert "at most 32" in (await response.json())["error"]
    await sim.inject()  # written to streams whose readers left: each one goes
    await wait_until(lambda: sv.activity.subscribers == 0)
    async with stream(base):
        assert sv.activity.subscribers == 1


async def test_a_stopping_bridge_ends_its_streams_without_waiting_on_them(
    sim: Simulator, tmp_path: Path
) -> None:
    sv = Supervisor(make_config(tmp_path, sim, routes=ROUTE_ALL))
    await sv.start()
    try:
        assert sv.admin is not None
        async with stream(f"http://127.0.0.1:{sv.admin.port}") as reader:
            await wait_until(lambda: sv.activity.subscribers == 1)
            started = time.monotonic()
            await asyncio.wait_for(sv.stop(), 10)
            # aiohttp waits up to 60 s for a handler still running: the stream did end.
            assert time.monotonic() - started < 10
            assert await asyncio.wait_for(reader.next(), 5) is None
    finally:
        await sv.stop()


async def test_a_stream_outlives_a_reload_that_replaces_its_sink(
    sim: Simulator, tmp_path: Path
) -> None:
    moved = {"audit": {"type": "file", "path": str(tmp_path / "moved.jsonl")}}
    new = make_config(tmp_path, sim, routes=ROUTE_ALL, sinks=moved)
    sv = Supervisor(make_config(tmp_path, sim, routes=ROUTE_ALL), reload_config=lambda: new)
    await sv.start()
    try:
        await wait_until(lambda: websocket_of(sv).receiving)
        assert sv.admin is not None
        async with stream(f"http://127.0.0.1:{sv.admin.port}", sink="audit") as reader:
            old_worker = sv.dispatcher.workers["audit"]
            assert await sv.reload()
            assert sv.dispatcher.workers["audit"] is not old_worker  # a new worker, same feed
            event_id = await sim.inject()
            (record,) = await reader.records(1)
        assert (record["kind"], record["event_id"]) == ("delivered", event_id)
        assert (tmp_path / "moved.jsonl").read_text().count(event_id) == 1
    finally:
        await sv.stop()


async def test_the_throughput_counts_what_the_bridge_did(
    bridge: tuple[Supervisor, str], sim: Simulator
) -> None:
    sv, base = bridge
    sent = [await sim.inject() for _ in range(4)]
    await wait_until(lambda: sv.store.cursor == sent[-1])
    await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 4)
    async with aiohttp.ClientSession() as http, http.get(f"{base}/api/throughput") as response:
        assert response.status == 200
        snapshot = await response.json()
    assert set(snapshot) == {"interval", "seconds", "end", "accepted", "delivered"}
    assert (snapshot["interval"], snapshot["seconds"]) == (1, 900)
    assert abs(snapshot["end"] - time.time()) < 5
    assert len(snapshot["accepted"]) == 900
    assert sum(snapshot["accepted"]) == 4
    assert list(snapshot["delivered"]) == ["audit"]
    assert len(snapshot["delivered"]["audit"]) == 900
    assert sum(snapshot["delivered"]["audit"]) == 4


async def test_the_api_paths_are_private(sim: Simulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, sim, routes=ROUTE_ALL, admin={"token": TOKEN})
    async with running_bridge(config) as sv, aiohttp.ClientSession() as http:
        assert sv.admin is not None
        base = f"http://127.0.0.1:{sv.admin.port}"
        for path in ("/api/stream", "/api/throughput"):
            async with http.get(f"{base}{path}") as response:
                assert response.status in (401, 403), path
        async with stream(base, headers={"Authorization": f"Bearer {TOKEN}"}):
            assert sv.activity.subscribers == 1


# --- the handlers on their own server ----------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(
    feed: ActivityFeed, *, keepalive: float, write_timeout: float = 30.0
) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get(
        "/api/stream", activity_stream(feed, keepalive=keepalive, write_timeout=write_timeout)
    )
    app.router.add_get("/api/throughput", throughput(feed, clock=lambda: 1_771_927_500.9))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        feed.close()
        await runner.cleanup()


def activity(n: int, error: str | None = None, at: float | None = None) -> Activity:
    kind = Kind.DEAD if error else Kind.ACCEPTED
    return Activity(at or time.time(), kind, f"evt_{n}", "webhook", "inb_a", "message.received",
                    "agent" if error else None, 3 if error else None, error)  # fmt: skip


async def test_a_quiet_stream_sends_keepalives_and_notices_a_reader_gone() -> None:
    feed = ActivityFeed()
    async with serving(feed, keepalive=0.05) as base:
        async with stream(base) as reader:
            async with asyncio.timeout(10):
                while "keepalive" not in reader.comments:
                    assert await reader.line() is not None
        # The client left; the next keepalive write fails and the subscription goes.
        await wait_until(lambda: feed.subscribers == 0)


async def test_a_reader_that_falls_behind_is_told_how_many_it_lost() -> None:
    feed = ActivityFeed(queue=10)
    async with serving(feed, keepalive=5) as base, stream(base) as reader:
        await wait_until(lambda: feed.subscribers == 1)
        for n in range(100):  # no await: the handler cannot read in between
            feed.publish(activity(n))
        assert await reader.next() == ("lost", {"count": 90})
        records = await reader.records(10)
    assert [r["event_id"] for r in records] == [f"evt_{n}" for n in range(90, 100)]


async def test_a_reader_that_never_reads_loses_its_stream_once_writes_stall() -> None:
    # It would otherwise keep one of the MAX_STREAMS, and its socket, for as long as it likes.
    feed = ActivityFeed(queue=100)
    app = web.Application()
    app.router.add_get("/api/stream", activity_stream(feed, keepalive=5, write_timeout=0.2))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.server is not None
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        _, writer = await asyncio.open_connection(sock=sock)
        writer.write(f"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await wait_until(lambda: feed.subscribers == 1)
        big = "x" * 2000
        async with asyncio.timeout(30):
            while feed.subscribers:  # records until the writes stall past the timeout
                for n in range(50):
                    feed.publish(activity(n, error=big))
                await asyncio.sleep(0)  # the stream's turn to write
        # Its connection goes too, while the client still reads nothing: a close that waited
        # for the unread bytes to leave would keep the socket (and them) for good.
        await wait_until(lambda: not runner.server.connections)  # type: ignore[union-attr]
        writer.close()
    finally:
        feed.close()
        await runner.cleanup()


@pytest.fixture
def _secret() -> Iterator[None]:
    logs.REDACTOR.set_secrets(["receiver-secret-0005"])
    yield
    logs.REDACTOR.set_secrets([])


@pytest.mark.usefixtures("_secret")
async def test_errors_leave_the_process_masked() -> None:
    feed = ActivityFeed()
    async with serving(feed, keepalive=5) as base, stream(base) as reader:
        await wait_until(lambda: feed.subscribers == 1)
        feed.publish(activity(1, error="HTTP 400: bad key receiver-secret-0005"))
        (record,) = await reader.records(1)
    assert record["error"] == "HTTP 400: bad key ***"
    assert (record["kind"], record["attempt"], record["sink"]) == ("dead", 3, "agent")


async def test_the_throughput_endpoint_answers_the_snapshot() -> None:
    feed = ActivityFeed()
    feed.publish(activity(1, at=1_771_927_500.2))  # counted at the time its record carries
    async with (
        serving(feed, keepalive=5) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/api/throughput") as response,
    ):
        snapshot = await response.json()
    assert snapshot["end"] == 1_771_927_500  # the handler's clock
    assert snapshot["delivered"] == {}
    assert snapshot["accepted"] == [0] * 899 + [1]
