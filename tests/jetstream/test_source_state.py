"""What a sidecar says of its consumer: a pull that times out with nothing to fetch is no failure,
whatever error nats-py raises it as; an error clears once consuming works again; and readiness
says the spool is full while it cannot take the message the consumer holds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from nats.js import JetStreamContext

from bridge.sources.nats import NatsSource
from tests.conftest import Receiver, events_named, running_bridge, wait_until

from .conftest import NatsServer, event_body
from .test_source import publish
from .test_source_hold import SPOOL, small_spool_sidecar, source_of


def taken(source: NatsSource) -> int:
    """Messages stored and acked, or held."""
    held = source.status()["held"]
    assert isinstance(held, int)
    return source.acked + held


async def test_a_pull_timing_out_as_the_builtin_timeout_error_is_no_failure(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nats-py's batch fetch raises the builtin TimeoutError (asyncio.TimeoutError), not its own,
    # when the server's answer to its first request arrives just as the wait runs out: a race
    # of well under a millisecond, made certain here for the first pull after ready.
    fetch = JetStreamContext.PullSubscription.fetch
    raised: list[int] = []
    armed: list[bool] = []

    async def racing(self: Any, *args: Any, **kwargs: Any) -> Any:
        if armed and not raised:
            raised.append(1)
            raise TimeoutError
        return await fetch(self, *args, **kwargs)

    monkeypatch.setattr(JetStreamContext.PullSubscription, "fetch", racing)
    config = small_spool_sidecar(tmp_path, nats_server, receiver)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
            armed.append(True)
            await wait_until(lambda: bool(raised), 10)
            await publish(nats_server, {"evt_1": event_body("evt_1")})
            await wait_until(lambda: receiver.accepted_ids() == ["evt_1"], 10)
            status = source_of(bridge).status()
    assert events_named(logs, "nats.consume_failed") == []
    assert status["last_error"] is None
    assert status["state"] == "consuming"
    assert len(events_named(logs, "nats.connected")) == 1


async def test_a_spool_that_cannot_take_the_held_message_is_full_until_it_can(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False
    ids = [f"evt_{i:02}" for i in range(16)]  # 15 fit the spool
    config = small_spool_sidecar(tmp_path, nats_server, receiver)
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        source = source_of(bridge)
        for n, event_id in enumerate(ids, start=1):  # one fetch each
            await publish(nats_server, {event_id: event_body(event_id)})
            await wait_until(lambda n=n: taken(source) == n, 10)  # type: ignore[misc]
        status: Any = await bridge.status()
        state, parts = bridge.readiness()
        # Under max_bytes, yet unable to take the event held: full, as the store says it.
        assert status["spool"]["bytes"] < SPOOL
        assert status["nats"]["consumer"]["held"] == 1
        assert status["spool"]["has_room"] is False
        assert (state, parts["store"]) == ("unavailable", "full")
        assert "spool is full" in status["nats"]["consumer"]["last_error"]

        receiver.up = True
        await wait_until(lambda: receiver.accepted_ids() == ids, 20)
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        status = await bridge.status()
    assert status["spool"]["has_room"] is True
    assert status["nats"]["consumer"]["held"] == 0


async def test_the_consumer_error_clears_once_its_messages_are_stored_again(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False
    ids = [f"evt_{i:02}" for i in range(30)]
    config = small_spool_sidecar(tmp_path, nats_server, receiver)
    async with running_bridge(config) as bridge:
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        source = source_of(bridge)
        await publish(nats_server, {i: event_body(i) for i in ids})
        await wait_until(lambda: source.last_error is not None, 10)
        assert "spool" in source.last_error
        receiver.up = True
        await wait_until(lambda: receiver.accepted_ids() == ids, 20)
        await wait_until(lambda: source.status()["held"] == 0, 10)
        assert source.last_error is None
