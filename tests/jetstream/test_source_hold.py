"""What a sidecar fetched and its spool has no room for is held, in stream order: nothing newer is
fetched until it is stored, nothing after it in its batch is stored before it, JetStream is told it
is in progress meanwhile (no redelivery, no delivery counted against it), and a stop nak's it so
the next start gets it back first."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bridge.config import Config
from bridge.sources.nats import NatsSource
from bridge.supervisor import Supervisor
from tests.conftest import AGENT_SECRET, Receiver, running_bridge, wait_until

from .conftest import (
    NatsServer,
    create_stream,
    event_body,
    load_raw,
    nats_client,
    redeliverable,
    server_ack_wait_passed,
    sidecar_raw,
)
from .test_source import consumer_settled, publish

SPOOL = 3072
"""The sidecar's max_bytes: about a dozen small events."""


def small_spool_sidecar(
    tmp_path: Path,
    server: NatsServer,
    receiver: Receiver,
    ack_wait: str = "30s",
    filters: list[str] | None = None,
) -> Config:
    """A sidecar whose spool holds about a dozen events, delivering to ``receiver``."""
    consume: dict[str, Any] = {"ack_wait": ack_wait}
    if filters:
        consume["filter_subjects"] = filters
    raw = sidecar_raw(tmp_path, server, consume=consume)
    raw["state"].update(max_bytes=SPOOL, min_free="0B")
    raw["sinks"] = {
        "agent": {
            "type": "http",
            "url": receiver.url,
            "secret": AGENT_SECRET,
            "retry": {"initial": "20ms", "max": "100ms"},
        }
    }
    return load_raw(tmp_path, raw)


def source_of(bridge: Supervisor) -> NatsSource:
    nats = bridge._parts().nats
    assert nats is not None
    assert nats.source is not None
    return nats.source


@contextlib.asynccontextmanager
async def sidecar(config: Config) -> AsyncIterator[tuple[Supervisor, NatsSource]]:
    async with running_bridge(config) as bridge:
        yield bridge, source_of(bridge)


def first_arrivals(receiver: Receiver) -> list[str]:
    """Event ids in the order the agent first received them."""
    return list(dict.fromkeys(receiver.accepted_ids()))


async def consumer_info(server: NatsServer) -> Any:
    async with nats_client(server) as client:
        return await client.jetstream().consumer_info("OPENMAIL", "agent-support")


async def test_a_full_spool_fetches_nothing_more_and_keeps_what_it_holds_in_progress(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False  # nothing drains: the spool fills
    ids = [f"evt_{i:02}" for i in range(30)]
    await create_stream(nats_server)
    await publish(nats_server, {i: event_body(i) for i in ids})
    config = small_spool_sidecar(tmp_path, nats_server, receiver, ack_wait="1s")
    async with sidecar(config) as (_, source):
        await wait_until(lambda: source.unacked > 0, 10)
        # Twice ack_wait by the server's clock: a sidecar that fetched again would have been
        # handed the same messages twice more, and refused them each time.
        await server_ack_wait_passed(nats_server, 1.0, times=2)
        stored = source.acked
        info = await consumer_info(nats_server)
        assert 0 < stored < len(ids)
        # Each message was delivered once, none redelivered; each not stored counted once.
        assert info.delivered.stream_seq == len(ids)
        assert info.delivered.consumer_seq == len(ids)
        assert info.num_ack_pending == len(ids) - stored
        assert source.unacked == len(ids) - stored
        assert source.status()["held"] == len(ids) - stored
        # In progress: past ack_wait, none of them is free for another pull of the consumer.
        assert await redeliverable(nats_server) == 0

        receiver.up = True
        await wait_until(lambda: set(receiver.accepted_ids()) == set(ids), 20)
        await wait_until(lambda: consumer_settled(nats_server), 10)
    assert first_arrivals(receiver) == ids
    assert len(receiver.accepted_ids()) == len(ids)
    info = await consumer_info(nats_server)
    assert info.delivered.consumer_seq == len(ids)  # still never redelivered
    assert info.num_redelivered == 0


async def test_a_refused_event_is_not_overtaken_by_the_rest_of_its_batch(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False
    ids = [f"evt_{i:02}" for i in range(15)]
    # evt_10 does not fit beside the ten before it; evt_11 alone would.
    bodies = {i: event_body(i, note="x" * (1500 if i == "evt_10" else 0)) for i in ids}
    assert 10 * len(bodies["evt_00"]) + len(bodies["evt_10"]) > SPOOL
    assert 11 * len(bodies["evt_00"]) <= SPOOL
    await create_stream(nats_server)
    await publish(nats_server, bodies)  # in the stream before the sidecar: one fetch takes all
    config = small_spool_sidecar(tmp_path, nats_server, receiver, ack_wait="1s")
    async with sidecar(config) as (_, source):
        await wait_until(lambda: source.unacked > 0, 10)
        assert source.acked == 10  # evt_00..evt_09; nothing after evt_10 is stored before it
        await server_ack_wait_passed(nats_server, 1.0, times=1)
        assert await redeliverable(nats_server) == 0
        receiver.up = True
        await wait_until(lambda: set(receiver.accepted_ids()) == set(ids), 20)
        await wait_until(lambda: consumer_settled(nats_server), 10)
    assert first_arrivals(receiver) == ids
    assert (await consumer_info(nats_server)).delivered.consumer_seq == len(ids)


async def test_messages_published_while_the_spool_is_full_wait_behind_the_held_ones(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False
    first = [f"evt_a{i:02}" for i in range(30)]
    later = [f"evt_b{i:02}" for i in range(5)]
    config = small_spool_sidecar(tmp_path, nats_server, receiver, ack_wait="30s")
    async with sidecar(config) as (bridge, source):
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        await publish(nats_server, {i: event_body(i) for i in first})
        await wait_until(lambda: source.unacked > 0, 10)
        await publish(nats_server, {i: event_body(i) for i in later})  # the same thread
        receiver.up = True
        # Well within ack_wait: nothing waits for a redelivery.
        await wait_until(lambda: set(receiver.accepted_ids()) == {*first, *later}, 20)
    assert first_arrivals(receiver) == first + later


async def test_a_stop_naks_what_is_held_so_the_next_start_stores_it_first(
    tmp_path: Path, nats_server: NatsServer, receiver: Receiver
) -> None:
    receiver.up = False
    first = [f"evt_a{i:02}" for i in range(30)]
    later = [f"evt_b{i:02}" for i in range(5)]
    config = small_spool_sidecar(tmp_path, nats_server, receiver, ack_wait="30s")
    async with sidecar(config) as (bridge, source):
        await wait_until(lambda: bridge.readiness()[0] == "ready", 10)
        await publish(nats_server, {i: event_body(i) for i in first})
        await wait_until(lambda: source.unacked > 0, 10)
    await publish(nats_server, {i: event_body(i) for i in later})
    receiver.up = True
    async with sidecar(config) as (bridge, _):
        # Well within ack_wait: the held ones came back at once, ahead of the newer ones.
        await wait_until(lambda: set(receiver.accepted_ids()) == {*first, *later}, 20)
    assert first_arrivals(receiver) == first + later
