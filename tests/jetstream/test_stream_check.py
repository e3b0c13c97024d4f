"""An existing stream that keeps less than the config asks for (fewer replicas, a shorter max
age) is warned about at each check, naming both values; one that keeps more is not."""

from __future__ import annotations

from pathlib import Path

import nats.errors
import structlog

from bridge.config import NatsStreamConfig
from bridge.metrics import Metrics
from bridge.nats.bus import NatsBus
from bridge.nats.stream import StreamState, compare
from tests.conftest import make_config, wait_until

from .conftest import NatsServer, nats_client, nats_section

DAY = 86400.0


def warned(config: NatsStreamConfig, *, replicas: int, max_age: float) -> list[tuple[str, str]]:
    check = compare(
        config,
        ["openmail.>"],
        config.duplicate_window,
        ["openmail.*.*"],
        found_replicas=replicas,
        found_max_age=max_age,
    )
    assert check.errors == []
    return [(w.event, w.hint) for w in check.warnings]


def test_fewer_replicas_than_configured_is_a_warning_naming_both() -> None:
    [(event, hint)] = warned(NatsStreamConfig(replicas=3), replicas=1, max_age=7 * DAY)
    assert event == "nats.stream_replicas"
    assert (
        "stream OPENMAIL has 1 replica(s), fewer than the configured nats.stream.replicas of 3"
        in hint
    )


def test_a_shorter_max_age_is_a_warning_naming_both() -> None:
    [(event, hint)] = warned(NatsStreamConfig(), replicas=1, max_age=3600)
    assert event == "nats.stream_max_age"
    assert "max age of 3600s, shorter than the configured nats.stream.max_age of 604800s" in hint
    [(_, hint)] = warned(NatsStreamConfig(max_age=0), replicas=1, max_age=DAY)
    assert (
        "max age of 86400s, shorter than the configured nats.stream.max_age of 0 (no limit)" in hint
    )


def test_a_stream_keeping_more_than_configured_is_no_warning() -> None:
    # A sidecar left at the defaults (replicas 1, 7d) on the stream the edges made R3, 30d.
    assert warned(NatsStreamConfig(), replicas=3, max_age=30 * DAY) == []
    assert warned(NatsStreamConfig(), replicas=1, max_age=0) == []  # 0: no limit
    assert warned(NatsStreamConfig(replicas=3, max_age=DAY), replicas=3, max_age=DAY) == []


async def test_an_existing_stream_with_a_shorter_max_age_is_warned_about_at_the_check(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with nats_client(nats_server) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["openmail.>"], duplicate_window=600.0, max_age=3600.0
        )
    config = make_config(tmp_path, nats=nats_section(nats_server), sinks={"bus": {"type": "nats"}})
    assert config.nats is not None
    bus = NatsBus(config.nats, Metrics(), config.sinks.values())
    with structlog.testing.capture_logs() as logs:
        await bus.start()
        try:
            await bus.connection.wait_connected()
        finally:
            await bus.stop()
    assert bus.stream.state is StreamState.VALID
    [hint] = bus.stream.warnings
    assert "max age of 3600s, shorter than the configured nats.stream.max_age of 604800s" in hint
    [line] = [e for e in logs if e["event"] == "nats.stream_max_age"]
    assert line["log_level"] == "warning"
    assert line["stream"] == "OPENMAIL"
    assert line["hint"] == hint


async def test_an_edge_asking_for_three_replicas_is_told_the_stream_has_one(
    tmp_path: Path, nats_cluster: list[NatsServer]
) -> None:
    urls = [node.url for node in nats_cluster]
    async with nats_client(nats_cluster[0], servers=urls) as client:
        js = client.jetstream()

        async def created() -> bool:  # once the cluster has elected its meta leader
            try:
                await js.add_stream(name="OPENMAIL", subjects=["openmail.>"], num_replicas=1)
            except (nats.errors.Error, TimeoutError):
                return False
            return True

        await wait_until(created, 20, interval=0.2)
    section = nats_section(nats_cluster)
    section["stream"]["replicas"] = 3
    config = make_config(tmp_path, nats=section, sinks={"bus": {"type": "nats"}})
    assert config.nats is not None
    bus = NatsBus(config.nats, Metrics(), config.sinks.values())
    with structlog.testing.capture_logs() as logs:
        await bus.start()
        try:
            await bus.connection.wait_connected()

            async def checked() -> bool:  # a check at connect may meet a leader election
                await bus.refresh()
                return bus.stream.state is StreamState.VALID

            await wait_until(checked, 20, interval=0.2)
        finally:
            await bus.stop()
    [hint] = bus.stream.warnings
    assert "has 1 replica(s), fewer than the configured nats.stream.replicas of 3" in hint
    assert [e["hint"] for e in logs if e["event"] == "nats.stream_replicas"] == [hint]
