"""Two sidecars naming the same durable consumer split the stream between them, and JetStream says
nothing: each sees the consumer's deliveries to the other as gaps in the consumer sequence, and
says so (``nats.consumer_shared``, a count in ``/status``, a metric)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from tests.conftest import events_named, read_lines, running_bridge, wait_until

from .conftest import NatsServer, event_body, load_raw, sidecar_raw
from .test_source import publish

ROUNDS = 12


async def test_two_sidecars_on_one_consumer_each_say_the_other_takes_its_mail(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
    configs = [load_raw(home, sidecar_raw(home, nats_server)) for home in homes]
    outs = [home / "events.jsonl" for home in homes]

    def received() -> int:
        return sum(len(read_lines(out)) for out in outs)

    with structlog.testing.capture_logs() as logs:
        async with running_bridge(configs[0]) as a, running_bridge(configs[1]) as b:
            for bridge in (a, b):
                await wait_until(lambda bridge=bridge: bridge.readiness()[0] == "ready", 10)
            # One message at a time: each waiting pull gets its turn, so both take some.
            for i in range(ROUNDS):
                await publish(nats_server, {f"evt_{i:02}": event_body(f"evt_{i:02}")})
                await wait_until(lambda i=i: received() == i + 1, 10)
            statuses: list[Any] = [await a.status(), await b.status()]
            elsewhere = [
                float(bridge.metrics.nats_delivered_elsewhere._value.get()) for bridge in (a, b)
            ]
    counts = [len(read_lines(out)) for out in outs]
    assert sum(counts) == ROUNDS
    assert min(counts) > 0  # the split itself: neither sidecar got all of its mail
    shown = [status["nats"]["consumer"]["delivered_elsewhere"] for status in statuses]
    assert sum(shown) > 0
    assert elsewhere == shown
    warnings = events_named(logs, "nats.consumer_shared")
    assert warnings
    assert all(w["log_level"] == "warning" and w["consumer"] == "agent-support" for w in warnings)
    assert "a consumer of its own" in warnings[0]["hint"]


async def test_one_sidecar_alone_sees_nothing_delivered_elsewhere(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    config = load_raw(tmp_path, sidecar_raw(tmp_path, nats_server))
    out = tmp_path / "events.jsonl"
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
            for i in range(ROUNDS):
                await publish(nats_server, {f"evt_{i:02}": event_body(f"evt_{i:02}")})
                await wait_until(lambda i=i: len(read_lines(out)) == i + 1, 10)
            status: Any = await bridge.status()
    assert status["nats"]["consumer"]["delivered_elsewhere"] == 0
    assert not events_named(logs, "nats.consumer_shared")
