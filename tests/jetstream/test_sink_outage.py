"""A NATS sink's deliveries that failed while NATS was down go when NATS is back, not when their
backoff ends: a bridge started before its NATS server, and one whose server went away and came
back. The retries here wait an hour, so a delivery seen within seconds was woken by the
reconnection."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bridge.supervisor import Supervisor
from tests.conftest import make_config, running_bridge, signed, wait_until

from .conftest import NatsServer, event_body, nats_client, nats_section, stream_messages

LONG_RETRY = {"initial": "1h", "max": "1h", "max_age": "1d"}
"""A backoff no test outlives: a retry seen within seconds was not waiting it out."""


async def post(bridge: Supervisor, http: aiohttp.ClientSession, event_id: str) -> None:
    assert bridge.webhook is not None
    body = event_body(event_id)
    url = f"http://127.0.0.1:{bridge.webhook.port}/webhooks"
    async with http.post(url, data=body, headers=signed(body)) as response:
        assert response.status == 200


async def published(server: NatsServer) -> list[str]:
    async with nats_client(server) as client:
        return [m.headers["Nats-Msg-Id"] for m in await stream_messages(client.jetstream())]


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
        await post(bridge, http, "evt_before")
        await wait_until(lambda: worker.state.delivered == 1, 10)
        nats_server.stop()
        for i in range(3):
            await post(bridge, http, f"evt_down_{i}")
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
        await post(bridge, http, "evt_early")
        await wait_until(lambda: worker.state.last_error is not None, 10)
        assert worker.state.delivered == 0
        nats_server.start()
        await wait_until(lambda: worker.state.delivered == 1, 15)
    assert await published(nats_server) == ["evt_early"]
