"""An existing durable consumer that would lose what the spool has not stored (acks covering more
than one message, a cap on deliveries, a push consumer) is not consumed from: reported by name
with a hint, shown in ``/status``, not ready, and checked again with backoff until the server's
consumer is fixed. What only differs from the config is a warning, ``deliver_policy`` included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bridge.sources.nats import NatsSource
from tests.conftest import events_named, read_lines, running_bridge, wait_until
from tests.fake_time import FakeTime

from .conftest import NatsServer, create_stream, event_body, load_raw, nats_client, sidecar_raw
from .test_source import consumer_settled, publish


async def make_consumer(server: NatsServer, **config: Any) -> None:
    """The durable consumer the sidecar is configured with, made beforehand as an operator or
    another tool might have made it."""
    config.setdefault("ack_policy", AckPolicy.EXPLICIT)
    async with nats_client(server) as client:
        await client.jetstream().add_consumer(
            "OPENMAIL", ConsumerConfig(durable_name="agent-support", ack_wait=30.0, **config)
        )


@pytest.fixture
def source_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """The NATS source's sleeps on a clock the test moves, and each backoff delay drawn at the
    top of its window (no jitter), so the schedule is exact."""
    times = FakeTime()
    init = NatsSource.__init__

    def with_fake_time(self: NatsSource, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs, sleep=times.sleep, clock=times, uniform=lambda _lo, hi: hi)

    monkeypatch.setattr(NatsSource, "__init__", with_fake_time)
    return times


LOSING = {
    "max_deliver": (
        {"max_deliver": 3},
        {"max_deliver": {"server": 3, "needed": -1}},
        "max_deliver is 3 (needs -1)",
    ),
    "ack_all": (
        {"ack_policy": AckPolicy.ALL},
        {"ack_policy": {"server": "all", "needed": "explicit"}},
        "ack_policy is all (needs explicit)",
    ),
    "ack_none": (
        {"ack_policy": AckPolicy.NONE},
        {"ack_policy": {"server": "none", "needed": "explicit"}},
        "ack_policy is none (needs explicit)",
    ),
    "push": (
        {"deliver_subject": "agent.push"},
        {"deliver_subject": {"server": "agent.push", "needed": None}},
        "push consumer (deliver_subject agent.push)",
    ),
}


@pytest.mark.parametrize(("made", "invalid", "shown"), LOSING.values(), ids=LOSING.keys())
async def test_a_consumer_that_would_lose_events_is_not_consumed_from(
    tmp_path: Path,
    nats_server: NatsServer,
    made: dict[str, Any],
    invalid: dict[str, Any],
    shown: str,
) -> None:
    await create_stream(nats_server)
    await make_consumer(nats_server, **made)
    await publish(nats_server, {"evt_1": event_body("evt_1")})
    config = load_raw(tmp_path, sidecar_raw(tmp_path, nats_server))
    out = tmp_path / "events.jsonl"
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(
                lambda: bool(events_named(logs, "nats.consumer_invalid") or read_lines(out)), 10
            )
            readiness, parts = bridge.readiness()
            status: Any = await bridge.status()
    # Nothing was taken from it: the event waits in the stream for a consumer that keeps it.
    assert read_lines(out) == []
    async with nats_client(nats_server) as client:
        info = await client.jetstream().consumer_info("OPENMAIL", "agent-support")
    assert info.delivered.stream_seq == 0
    (error,) = events_named(logs, "nats.consumer_invalid")
    assert error["log_level"] == "error"
    assert (error["stream"], error["consumer"]) == ("OPENMAIL", "agent-support")
    assert error["invalid"] == invalid
    assert "nats consumer rm" in error["hint"]
    assert "nats.consume.consumer" in error["hint"]
    # A pure sidecar that cannot consume is not ready, though NATS itself is reachable; the
    # readiness line says why.
    assert readiness == "unavailable"
    assert parts["nats"] == "consumer_invalid"
    consumer = status["nats"]["consumer"]
    assert consumer["state"] == "consumer_invalid"
    assert "consumer agent-support on stream OPENMAIL" in consumer["last_error"]
    assert shown in consumer["last_error"]
    assert "delete it" in consumer["last_error"]


async def test_fixing_the_consumer_on_the_server_recovers_without_a_restart(
    tmp_path: Path, nats_server: NatsServer, source_time: FakeTime
) -> None:
    await create_stream(nats_server)
    await make_consumer(nats_server, max_deliver=5)
    config = load_raw(tmp_path, sidecar_raw(tmp_path, nats_server))
    out = tmp_path / "events.jsonl"
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await publish(nats_server, {"evt_1": event_body("evt_1")})
            # Checked again and again, the delay doubling from retry_wait (1s), one error line.
            for delay in (1.0, 2.0, 4.0, 8.0):
                end = source_time.now + delay
                await wait_until(lambda end=end: source_time.sleeping_until() == [end], 10)
                source_time.advance_to(end)
            await wait_until(lambda: source_time.sleeping_until() == [source_time.now + 16.0])
            assert len(events_named(logs, "nats.consumer_invalid")) == 1
            assert bridge.readiness()[0] == "unavailable"

            # The operator lifts the cap (`nats consumer edit`); the next check finds it usable.
            await make_consumer(nats_server, max_deliver=-1)
            source_time.advance_to(source_time.now + 16.0)
            await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
            await wait_until(lambda: len(read_lines(out)) == 1, 10)
            await wait_until(lambda: consumer_settled(nats_server), 10)
            status: Any = await bridge.status()
    assert [line["event_id"] for line in read_lines(out)] == ["evt_1"]
    assert status["nats"]["consumer"]["state"] == "consuming"
    assert status["nats"]["consumer"]["last_error"] is None
    assert len(events_named(logs, "nats.consumer_valid")) == 1


async def test_a_different_deliver_policy_is_warned_of_and_the_consumer_used(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    await create_stream(nats_server)
    await make_consumer(nats_server, deliver_policy=DeliverPolicy.NEW)
    config = load_raw(tmp_path, sidecar_raw(tmp_path, nats_server))
    out = tmp_path / "events.jsonl"
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
            await publish(nats_server, {"evt_1": event_body("evt_1")})
            await wait_until(lambda: len(read_lines(out)) == 1, 10)
    (warning,) = events_named(logs, "nats.consumer_differs")
    assert warning["differs"] == {"deliver_policy": {"server": "new", "config": "all"}}
    assert not events_named(logs, "nats.consumer_invalid")
