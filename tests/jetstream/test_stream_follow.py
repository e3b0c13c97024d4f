"""The stream check follows the server while the bridge stays connected: a stream deleted is
created again by the next publishes, which then go; a stream fixed (its subjects) is published to
without a restart; ``/status`` and the gauges never keep a gone stream's counts; and the checks a
burst of failures asks for are at most one per ``RECHECK_INTERVAL``.

The sinks' retries wait an hour: a delivery seen within seconds was woken by the stream becoming
usable again, not by its backoff."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats.js.errors
import pytest
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from bridge.config import NatsStreamConfig
from bridge.nats.stream import RECHECK_INTERVAL, StreamKeeper, StreamState
from bridge.supervisor import Supervisor
from tests.conftest import make_config, running_bridge, wait_until
from tests.fake_time import FakeTime

from .conftest import (
    LONG_RETRY,
    NatsServer,
    nats_client,
    nats_section,
    post_signed,
    published,
)


def edge_config(tmp_path: Path, server: NatsServer, **stream: Any) -> Any:
    section = nats_section(server)
    section["stream"].update(stream)
    return make_config(
        tmp_path,
        nats=section,
        sinks={"bus": {"type": "nats", "timeout": "1s", "retry": LONG_RETRY}},
    )


async def nats_status(bridge: Supervisor) -> dict[str, Any]:
    status: Any = await bridge.status()
    stream: dict[str, Any] = status["nats"]["stream"]
    return stream


def gauges(bridge: Supervisor) -> tuple[float | None, float | None]:
    registry = bridge.metrics.registry
    return (
        registry.get_sample_value("openmail_bridge_nats_stream_messages"),
        registry.get_sample_value("openmail_bridge_nats_stream_last_sequence"),
    )


async def test_a_stream_deleted_while_connected_is_created_again_and_published_to(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with (
        running_bridge(edge_config(tmp_path, nats_server)) as bridge,
        aiohttp.ClientSession() as http,
    ):
        worker = bridge.dispatcher.workers["bus"]
        await post_signed(bridge, http, "evt_before")
        await wait_until(lambda: worker.state.delivered == 1, 10)
        async with nats_client(nats_server) as client:
            await client.jetstream().delete_stream("OPENMAIL")
        with structlog.testing.capture_logs() as logs:
            await post_signed(bridge, http, "evt_after")
            # The first publish finds no stream; the check it asks for creates it again, and
            # the retry goes then.
            await wait_until(lambda: worker.state.delivered == 2, 15)
        assert [e["event"] for e in logs if e["event"] == "nats.stream_created"] == [
            "nats.stream_created"
        ]
        stream = await nats_status(bridge)
    assert await published(nats_server) == ["evt_after"]
    assert (stream["check"], stream["messages"], stream["last_seq"]) == ("created", 1, 1)


async def test_a_stream_fixed_while_connected_is_published_to_without_a_restart(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with nats_client(nats_server) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["other.>"], duplicate_window=120.0
        )
    async with (
        running_bridge(edge_config(tmp_path, nats_server)) as bridge,
        aiohttp.ClientSession() as http,
    ):
        worker = bridge.dispatcher.workers["bus"]
        await wait_until(lambda: bridge.readiness()[1].get("nats") == "connected", 10)
        assert (await nats_status(bridge))["check"] == "invalid"
        await post_signed(bridge, http, "evt_1")
        await wait_until(lambda: worker.state.last_error is not None, 10)
        assert "other.>" in (worker.state.last_error or "")
        async with nats_client(nats_server) as client:
            await client.jetstream().update_stream(
                name="OPENMAIL", subjects=["other.>", "openmail.>"], duplicate_window=120.0
            )

        async def delivered() -> bool:  # status read as an operator or a scrape would
            await bridge.status()
            return worker.state.delivered == 1

        await wait_until(delivered, 15, interval=0.2)
        stream = await nats_status(bridge)
    assert (stream["check"], stream["problem"]) == ("valid", None)
    assert await published(nats_server) == ["evt_1"]


async def test_a_deleted_stream_leaves_no_counts_in_status_or_gauges(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    # The stream the operator made has one replica; this bridge would create it with three,
    # which a single server refuses: once deleted, it stays missing.
    async with nats_client(nats_server) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["openmail.>"], duplicate_window=120.0
        )
    async with (
        running_bridge(edge_config(tmp_path, nats_server, replicas=3)) as bridge,
        aiohttp.ClientSession() as http,
    ):
        worker = bridge.dispatcher.workers["bus"]
        for i in range(3):
            await post_signed(bridge, http, f"evt_{i}")
        await wait_until(lambda: worker.state.delivered == 3, 10)
        stream = await nats_status(bridge)
        assert (stream["check"], stream["messages"], stream["last_seq"]) == ("valid", 3, 3)
        await bridge.metrics_text()
        assert gauges(bridge) == (3.0, 3.0)
        async with nats_client(nats_server) as client:
            await client.jetstream().delete_stream("OPENMAIL")

        async def counts_gone() -> bool:
            stream = await nats_status(bridge)
            return (stream["messages"], stream["last_seq"]) == (None, None)

        await wait_until(counts_gone, 10, interval=0.2)
        await bridge.metrics_text()
        assert gauges(bridge) == (0.0, 0.0)
        assert (await nats_status(bridge))["check"] == "missing"

        async def told_why() -> bool:  # once the check it asked for has tried to create it
            problem: str = (await nats_status(bridge))["problem"]
            return problem.startswith("stream OPENMAIL does not exist and cannot be created: ")

        await wait_until(told_why, 10, interval=0.2)
        stream = await nats_status(bridge)
        assert (stream["check"], stream["messages"], stream["last_seq"]) == ("missing", None, None)


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    async with nats_client(nats_server) as nc:
        yield nc


async def stream_exists(js: JetStreamContext) -> bool:
    try:
        await js.stream_info("OPENMAIL")
    except nats.js.errors.NotFoundError:
        return False
    return True


async def test_checks_asked_for_between_connections_are_one_per_interval(client: Client) -> None:
    js = client.jetstream()
    clock = FakeTime()
    keeper = StreamKeeper(
        NatsStreamConfig(subjects=("openmail.>",), duplicate_window=120.0),
        ["openmail.*.*"],
        jetstream=lambda: js,
        clock=clock,
        sleep=clock.sleep,
    )
    try:
        await keeper.ensure(js)  # the check after a connection, at START
        assert (keeper.state, keeper.recoveries) == (StreamState.CREATED, 1)
        await js.delete_stream("OPENMAIL")
        for _ in range(5):  # a burst of publishes failing on the stream
            keeper.suspect()
        # One check, when the interval since the last one has passed; not before.
        await wait_until(lambda: clock.sleeping_until() == [clock.now + RECHECK_INTERVAL], 5)
        assert not await stream_exists(js)
        assert keeper.recoveries == 1
        clock.advance_to(clock.now + RECHECK_INTERVAL)
        await wait_until(lambda: keeper.recoveries == 2, 5)
        assert await stream_exists(js)
        assert keeper.state is StreamState.CREATED
        assert clock.sleeping_until() == []
        # The next request waits for the next interval again; a read meanwhile does not check.
        keeper.suspect()
        await wait_until(lambda: clock.sleeping_until() == [clock.now + RECHECK_INTERVAL], 5)
        assert not await keeper.recheck()
    finally:
        await keeper.stop()
