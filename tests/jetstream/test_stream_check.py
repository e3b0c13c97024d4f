"""An existing stream that keeps less than the config asks for (fewer replicas, a shorter max
age) is warned about at each check, naming both values; one that keeps more is not. A cap on what
it holds (``max_msgs``, ``max_bytes``, ``max_msgs_per_subject``) is warned about naming the limit
and what reaching it does (removing unfetched messages, or refusing publishes)."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import nats.errors
import pytest
import structlog
from nats.js.api import StreamConfig

from bridge.config import NatsStreamConfig
from bridge.metrics import Metrics
from bridge.nats.bus import NatsBus
from bridge.nats.stream import StreamLimits, StreamState, compare
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


def edge_bus(tmp_path: Path, section: dict[str, Any]) -> NatsBus:
    """An edge's NATS parts for ``section`` with one NATS sink, not started."""
    config = make_config(tmp_path, nats=section, sinks={"bus": {"type": "nats"}})
    assert config.nats is not None
    return NatsBus(config.nats, Metrics(), config.sinks.values())


async def checked_at_connect(
    tmp_path: Path, server: NatsServer
) -> tuple[NatsBus, list[MutableMapping[str, Any]]]:
    """An edge's NATS parts connected once to ``server`` and stopped: its stream check as the
    connection ran it, and the log lines it wrote."""
    bus = edge_bus(tmp_path, nats_section(server))
    with structlog.testing.capture_logs() as logs:
        await bus.start()
        try:
            await bus.connection.wait_connected()
        finally:
            await bus.stop()
    return bus, logs


async def test_a_read_for_status_that_fails_unexpectedly_is_logged(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /status no longer waits for the read's outcome, so a failure the read does not expect
    # (a bug) must be said where an operator sees it.
    bus = edge_bus(tmp_path, nats_section(nats_server))

    async def broken(self: Any) -> None:
        raise RuntimeError("a bug in the read")

    monkeypatch.setattr(type(bus.stream), "read", broken)
    with structlog.testing.capture_logs() as logs:
        await bus.start()
        try:
            await bus.connection.wait_connected()
            await bus.refresh()
            await wait_until(lambda: any(e["event"] == "nats.read_failed" for e in logs))
        finally:
            await bus.stop()
    (line,) = [e for e in logs if e["event"] == "nats.read_failed"]
    assert line["error"] == "RuntimeError: a bug in the read"


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
    bus, logs = await checked_at_connect(tmp_path, nats_server)
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
    bus = edge_bus(tmp_path, section)
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


def limit_warnings(limits: StreamLimits, *, publishes: bool = True) -> list[tuple[str, str]]:
    config = NatsStreamConfig()
    published = ["openmail.*.*"] if publishes else []
    check = compare(config, ["openmail.>"], config.duplicate_window, published, found_limits=limits)
    assert check.errors == []  # an operator may want the cap: never an error
    return [(w.event, w.hint) for w in check.warnings]


def test_a_message_or_byte_cap_removing_the_oldest_is_a_warning_naming_it() -> None:
    [(event, hint)] = limit_warnings(StreamLimits(max_msgs=50))
    assert event == "nats.stream_max_msgs"
    assert hint.startswith("stream OPENMAIL holds at most 50 messages (max_msgs) and then removes")
    assert "oldest messages (discard old), whether or not a consumer has fetched them" in hint
    [(event, hint)] = limit_warnings(StreamLimits(max_bytes=1 << 20), publishes=False)
    assert event == "nats.stream_max_bytes"
    assert "holds at most 1048576 bytes (max_bytes) and then removes the oldest" in hint


def test_a_cap_refusing_new_messages_is_a_warning_to_a_bridge_that_publishes() -> None:
    limits = StreamLimits(max_msgs=50, max_bytes=4096, discard_new=True)
    found = limit_warnings(limits)
    assert [event for event, _ in found] == ["nats.stream_max_msgs", "nats.stream_max_bytes"]
    for _, hint in found:
        assert "then refuses new ones (discard new): this bridge's publishes fail" in hint
    # A sidecar loses nothing to a stream refusing what the edges publish.
    assert limit_warnings(limits, publishes=False) == []


def test_a_per_subject_cap_is_a_warning_naming_what_it_does() -> None:
    [(event, hint)] = limit_warnings(StreamLimits(max_msgs_per_subject=10), publishes=False)
    assert event == "nats.stream_max_msgs_per_subject"
    assert "holds at most 10 messages on each subject (max_msgs_per_subject" in hint
    assert "removes the oldest messages" in hint
    # Discard new applies per subject only with discard_new_per_subject.
    [(_, hint)] = limit_warnings(StreamLimits(max_msgs_per_subject=10, discard_new=True))
    assert "removes the oldest messages" in hint
    per_subject = StreamLimits(
        max_msgs_per_subject=10, discard_new=True, discard_new_per_subject=True
    )
    [(_, hint)] = limit_warnings(per_subject)
    assert "then refuses new ones" in hint


@pytest.mark.parametrize(("discard", "new"), [("new", True), ("old", False)])
def test_a_streams_policy_is_read_as_the_server_sends_it(discard: str, new: bool) -> None:
    # nats-py leaves the policy of a stream it read as the server's text, not its enum.
    config = StreamConfig.from_response({"name": "OM", "max_msgs": 5, "discard": discard})
    assert StreamLimits.of(config).discard_new is new
    [(_, hint)] = limit_warnings(StreamLimits.of(config))
    assert ("refuses new ones" in hint) is new


def test_a_stream_without_limits_is_no_warning() -> None:
    assert limit_warnings(StreamLimits()) == []
    assert limit_warnings(StreamLimits(discard_new=True)) == []


async def test_an_existing_stream_with_a_message_cap_is_warned_about_at_the_check(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    async with nats_client(nats_server) as client:
        await client.jetstream().add_stream(
            name="OPENMAIL", subjects=["openmail.>"], duplicate_window=600.0, max_msgs=50
        )
    bus, logs = await checked_at_connect(tmp_path, nats_server)
    assert bus.stream.state is StreamState.VALID
    [hint] = bus.stream.warnings
    assert "holds at most 50 messages (max_msgs) and then removes the oldest" in hint
    [line] = [e for e in logs if e["event"] == "nats.stream_max_msgs"]
    assert (line["log_level"], line["stream"], line["hint"]) == ("warning", "OPENMAIL", hint)
