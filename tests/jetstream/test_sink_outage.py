"""A NATS sink's deliveries that failed while NATS was down go when NATS is back, not when their
backoff ends: a bridge started before its NATS server, and one whose server went away and came
back. The retries here wait an hour, so a delivery seen within seconds was woken by the
reconnection."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import make_config, running_bridge, wait_until

from .conftest import (
    LONG_RETRY,
    NatsServer,
    nats_section,
    post_signed,
    published,
)


async def test_events_spooled_while_nats_was_down_go_when_it_is_back(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = make_config(
        tmp_path,
        nats=nats_section(nats_server),
        sinks={"bus": {"type": "nats", "timeout": "1s", "retry": LONG_RETRY}},
    )
    async with running_bridge(config) as bridge, aiohttp.ClientSession() as http:
        worker = bridge.dispatcher.workers["bus"]
        await post_signed(bridge, http, "evt_before")
        await wait_until(lambda: worker.state.delivered == 1, 10)
        nats_server.stop()
        for i in range(3):
            await post_signed(bridge, http, f"evt_down_{i}")
        await wait_until(lambda: worker.state.last_error is not None, 10)
        assert worker.state.delivered == 1
        nats_server.start()  # same port, same store
        await wait_until(lambda: worker.state.delivered == 4, 15)
    assert await published(nats_server) == ["evt_before", "evt_down_0", "evt_down_1", "evt_down_2"]


async def test_events_stored_before_nats_first_connects_go_when_it_does(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    nats_server.stop()
    config = make_config(
        tmp_path,
        nats=nats_section(nats_server),
        sinks={"bus": {"type": "nats", "timeout": "1s", "retry": LONG_RETRY}},
    )
    async with running_bridge(config) as bridge, aiohttp.ClientSession() as http:
        worker = bridge.dispatcher.workers["bus"]
        await post_signed(bridge, http, "evt_early")
        await wait_until(lambda: worker.state.last_error is not None, 10)
        assert worker.state.delivered == 0
        nats_server.start()
        await wait_until(lambda: worker.state.delivered == 1, 15)
    assert await published(nats_server) == ["evt_early"]
