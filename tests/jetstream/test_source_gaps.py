"""Messages the stream removes by its limits before a sidecar fetched them are counted, logged and
shown: exactly for a consumer of the whole stream, whether the sidecar was down or running with
its spool full; for a filtered consumer only what must have been removed, so that other subjects'
messages leaving the stream never count."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import NatsStreamConfig
from bridge.nats.stream import stream_config
from bridge.sources import nats_gap
from bridge.sources.nats_gap import SkipWatch
from bridge.supervisor import Supervisor
from tests.conftest import Receiver, events_named, running_bridge, wait_until

from .conftest import NatsServer, event_body, nats_client
from .test_source import publish
from .test_source_hold import small_spool_sidecar, source_of

MAX_MSGS = 20
"""The stream's limit: the oldest messages beyond it leave the stream."""
SUPPORT = "openmail.inb_support.>"


@pytest.fixture(autouse=True)
def looks() -> Iterator[list[int]]:
    """Looks at the consumer and the stream every 50 ms while nothing is fetched; each look's
    consumer sequence is recorded."""
    seen: list[int] = []
    looked = SkipWatch.looked

    def recording(self: SkipWatch, info: Any, first_seq: int, last_seq: int) -> Any:
        seen.append(first_seq)
        return looked(self, info, first_seq, last_seq)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(nats_gap, "LOOK_EVERY", 0.05)
        patch.setattr(SkipWatch, "looked", recording)
        yield seen


async def capped_stream(server: NatsServer) -> None:
    """The stream as an operator might have made it, keeping the last MAX_MSGS messages."""
    config = stream_config(NatsStreamConfig(subjects=("openmail.>",), duplicate_window=120.0))
    async with nats_client(server) as client:
        await client.jetstream().add_stream(dataclasses.replace(config, max_msgs=MAX_MSGS))


async def publish_to(server: NatsServer, inbox: str, ids: list[str]) -> None:
    async with nats_client(server) as client:
        js = client.jetstream()
        for event_id in ids:
            await js.publish(
                f"openmail.{inbox}.message_received",
                event_body(event_id, inbox=inbox),
                headers={"Nats-Msg-Id": event_id, "X-Event-Id": event_id},
            )


def skipped(bridge: Supervisor) -> object:
    return source_of(bridge).status()["skipped"]


async def stream_first_seq(server: NatsServer) -> int:
    async with nats_client(server) as client:
        return int((await client.jetstream().stream_info("OPENMAIL")).state.first_seq)


async def test_what_left_the_stream_while_the_spool_was_full_is_counted_and_logged(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False  # the spool fills; one message is held, nothing more is fetched
    await capped_stream(nats_server)
    first = [f"evt_a{i:02}" for i in range(16)]  # sequences 1..16
    later = [f"evt_b{i:02}" for i in range(30)]  # 17..46: the stream keeps 27..46
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(small_spool_sidecar(tmp_path, nats_server, receiver)) as bridge:
            await publish(nats_server, {i: event_body(i) for i in first})
            source = source_of(bridge)
            await wait_until(lambda: source.status()["held"] == 1, 10)
            await publish(nats_server, {i: event_body(i) for i in later})
            # Seen while the sidecar still holds its spool full: 17..26 left unseen.
            await wait_until(lambda: skipped(bridge) == 10, 10)
            receiver.up = True
            await wait_until(lambda: set(receiver.accepted_ids()) == {*first, *later[10:]}, 20)
            assert skipped(bridge) == 10
            assert bridge.metrics.nats_skipped._value.get() == 10
            metrics = (await bridge.metrics_text()).decode()
    assert "openmail_bridge_nats_skipped_total 10.0" in metrics
    (line,) = events_named(logs, "nats.messages_skipped")
    assert line["log_level"] == "warning"
    assert (line["count"], line["first_seq"], line["last_seq"]) == (10, 17, 26)
    assert line["exact"] is True
    assert line["total"] == 10
    assert "raise the stream's limits" in line["hint"]
    assert "sinks up" in line["hint"]


async def test_what_left_the_stream_while_the_sidecar_was_down_is_counted_at_its_return(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    await capped_stream(nats_server)
    config = small_spool_sidecar(tmp_path, nats_server, receiver)
    async with running_bridge(config):
        await publish(nats_server, {f"evt_a{i}": event_body(f"evt_a{i}") for i in range(5)})
        await wait_until(lambda: len(receiver.accepted) == 5, 10)
    await publish(nats_server, {f"evt_b{i:02}": event_body(f"evt_b{i:02}") for i in range(30)})
    assert await stream_first_seq(nats_server) == 16  # 6..15 left before the sidecar is back
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await wait_until(lambda: len(receiver.accepted) == 25, 10)
            assert skipped(bridge) == 10
    (line,) = events_named(logs, "nats.messages_skipped")
    assert (line["count"], line["first_seq"], line["last_seq"]) == (10, 6, 15)
    assert receiver.accepted_ids()[5:] == [f"evt_b{i:02}" for i in range(10, 30)]


async def test_other_subjects_leaving_the_stream_never_count_for_a_filtered_consumer(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver, looks: list[int]
) -> None:
    receiver.up = False
    await capped_stream(nats_server)
    support = [f"evt_s{i:02}" for i in range(16)]
    config = small_spool_sidecar(tmp_path, nats_server, receiver, filters=[SUPPORT])
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await publish_to(nats_server, "inb_support", support)
            await wait_until(lambda: source_of(bridge).status()["held"] == 1, 10)
            # Other inboxes push every support message, delivered or held, out of the stream.
            await publish_to(nats_server, "inb_sales", [f"evt_x{i:02}" for i in range(40)])
            first_seq = await stream_first_seq(nats_server)
            assert first_seq > len(support)
            await wait_until(lambda: looks.count(first_seq) >= 2, 10)  # seen while stalled
            receiver.up = True
            await wait_until(lambda: len(receiver.accepted) == len(support), 10)
            await publish_to(nats_server, "inb_support", ["evt_t00", "evt_t01"])
            await wait_until(lambda: len(receiver.accepted) == len(support) + 2, 10)
            assert skipped(bridge) == 0
    assert events_named(logs, "nats.messages_skipped") == []
    assert receiver.accepted_ids() == [*support, "evt_t00", "evt_t01"]


async def test_a_filtered_consumer_counts_what_it_had_left_once_the_stream_lost_it(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver, looks: list[int]
) -> None:
    receiver.up = False
    await capped_stream(nats_server)
    support = [f"evt_s{i:02}" for i in range(16)]  # 1..16: 15 stored, one held
    waiting = [f"evt_w{i:02}" for i in range(6)]  # 17..22: left to give, never fetched
    config = small_spool_sidecar(tmp_path, nats_server, receiver, filters=[SUPPORT])
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as bridge:
            await publish_to(nats_server, "inb_support", support)
            await wait_until(lambda: source_of(bridge).status()["held"] == 1, 10)
            await publish_to(nats_server, "inb_support", waiting)
            seen = len(looks)
            await wait_until(lambda: len(looks) >= seen + 2, 10)  # a look has counted them
            await publish_to(nats_server, "inb_sales", [f"evt_x{i:02}" for i in range(40)])
            await wait_until(lambda: skipped(bridge) == len(waiting), 10)
            receiver.up = True
            await wait_until(lambda: len(receiver.accepted) == len(support), 10)
    (line,) = events_named(logs, "nats.messages_skipped")
    assert line["count"] == len(waiting)
    assert line["exact"] is False  # with a filter: what must have been removed
    assert line["first_seq"] == len(support) + 1
    assert receiver.accepted_ids() == support
