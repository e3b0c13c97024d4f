"""Stream order across sidecar processes: what JetStream does with deliveries a process never
settled (checked against the server itself), a sidecar SIGKILLed with messages fetched and not
stored (the next one stores them before anything newer), and a stop in the middle of a pull (what
the pull received is nak'd, not left to ``ack_wait``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, SequenceInfo
from nats.js.errors import NotFoundError

from bridge.sources.nats_delivery import Delivery
from bridge.sources.nats_redelivery import MARGIN, RedeliveryGate
from tests.conftest import AGENT_SECRET, BridgeProcess, Receiver, running_bridge, wait_until
from tests.fake_time import FakeTime
from tests.system._harness import Bridge, admin_get

from .conftest import (
    LoopbackRelay,
    NatsServer,
    create_stream,
    event_body,
    nats_client,
    server_ack_wait_passed,
    sidecar_raw,
)
from .test_source import publish, sidecar_config
from .test_source_hold import SPOOL, consumer_info, first_arrivals

NEXT = "$JS.API.CONSUMER.MSG.NEXT.OPENMAIL.agent-support"
ACK_WAIT = 6.0
"""The killed sidecar's consumer's ack_wait: its in-progress notices (every third of it) keep
what it held from coming back for at least two thirds of it after the kill, longer than a
restart takes."""


async def next_at_once(server: NatsServer) -> int | None:
    """The stream sequence of the message the consumer hands a pull at once (``no_wait``), or
    None when it has none to give now. (The reply is read off a subscription of our own: it is
    the message itself, with the ack subject as its reply.)"""
    async with nats_client(server) as client:
        inbox = client.new_inbox()
        sub = await client.subscribe(inbox)
        request = json.dumps({"batch": 1, "no_wait": True}).encode()
        await client.publish(NEXT, request, reply=inbox)
        msg = await sub.next_msg(timeout=5)
    if (msg.headers or {}).get("Status"):
        return None
    return int(msg.metadata.sequence.stream)


def stream_seqs(msgs: list[Any]) -> list[int]:
    return [msg.metadata.sequence.stream for msg in msgs]


async def test_jetstream_gives_a_pull_expired_deliveries_before_newer_messages(
    nats_server: NatsServer,
) -> None:
    """What the sidecar relies on, asked of nats-server itself: deliveries to a client that went
    away without acking are given again only once ack_wait has passed, and then ahead of every
    message not delivered yet; before that, a pull gets the newer messages."""
    await create_stream(nats_server)
    await publish(nats_server, {f"evt_{i}": event_body(f"evt_{i}") for i in range(1, 7)})
    config = ConsumerConfig(
        durable_name="probe", ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0, max_deliver=-1
    )
    async with nats_client(nats_server) as client:
        js = client.jetstream()
        await js.add_consumer("OPENMAIL", config)
        async with nats_client(nats_server) as earlier:  # closed without acking: as if killed
            sub = await earlier.jetstream().pull_subscribe_bind("probe", stream="OPENMAIL")
            assert stream_seqs(await sub.fetch(3, timeout=2)) == [1, 2, 3]
        later = await js.pull_subscribe_bind("probe", stream="OPENMAIL")
        (newer,) = await later.fetch(1, timeout=2)
        assert stream_seqs([newer]) == [4]  # within ack_wait: the unsettled ones are not given
        await newer.ack()
        await server_ack_wait_passed(nats_server, 1.0, times=1)
        after = await later.fetch(10, timeout=2)
    assert stream_seqs(after) == [1, 2, 3, 5, 6]
    assert [msg.metadata.num_delivered for msg in after] == [2, 2, 2, 1, 1]


def small_spool_sidecar(
    tmp_path: Path, server: NatsServer, receiver: Receiver, procs: list[BridgeProcess]
) -> Bridge:
    """A sidecar subprocess whose spool takes about a dozen events, delivering to ``receiver``."""
    raw = sidecar_raw(tmp_path / "sidecar", server, consume={"ack_wait": f"{ACK_WAIT}s"})
    raw["log"] = {"level": "info", "format": "json"}
    raw["state"].update(max_bytes=SPOOL, min_free="0B")
    raw["sinks"] = {
        "agent": {
            "type": "http",
            "url": receiver.url,
            "secret": AGENT_SECRET,
            "retry": {"initial": "20ms", "max": "100ms"},
        }
    }
    return Bridge(tmp_path / "sidecar.yaml", raw, procs)


async def consumer_state(bridge: Bridge) -> dict[str, Any]:
    status = await admin_get(bridge, "/status")
    consumer: dict[str, Any] = status["nats"]["consumer"]
    return consumer


FIRST = [f"evt_a{i:02}" for i in range(30)]
LATER = [f"evt_b{i:02}" for i in range(5)]
"""One thread: FIRST in the stream before a sidecar is killed holding most of it, LATER after."""


async def killed_holding(
    tmp_path: Path, server: NatsServer, receiver: Receiver, procs: list[BridgeProcess]
) -> tuple[Bridge, int]:
    """A sidecar that fetched all of FIRST, stored what its spool took (the agent is down) and
    was SIGKILLed holding the rest: delivered, never acked, its outcome unknown to the next
    process. LATER is published after; the agent is up again. The sidecar, and how many
    messages it held."""
    receiver.up = False
    await create_stream(server)
    await publish(server, {i: event_body(i) for i in FIRST})
    sidecar = small_spool_sidecar(tmp_path, server, receiver, procs)
    await sidecar.start()

    async def all_fetched_some_held() -> bool:
        with contextlib.suppress(NotFoundError):  # not created yet
            info = await consumer_info(server)
            held = (await consumer_state(sidecar))["held"]
            return bool(info.delivered.stream_seq == len(FIRST) and held > 0)
        return False

    await wait_until(all_fetched_some_held, 15)
    held = int((await consumer_state(sidecar))["held"])
    sidecar.kill()
    await publish(server, {i: event_body(i) for i in LATER})
    receiver.up = True
    return sidecar, held


async def awaiting(sidecar: Bridge) -> bool:
    return (await consumer_state(sidecar))["state"] == "awaiting_redelivery"


def delivered_once_in_order(receiver: Receiver) -> None:
    assert first_arrivals(receiver) == FIRST + LATER
    assert sum((Counter(receiver.accepted_ids()) - Counter(FIRST + LATER)).values()) == 0


@pytest.mark.timeout(60)
async def test_a_sidecar_killed_holding_messages_is_followed_by_one_that_stores_them_first(
    tmp_path: Path,
    nats_server: NatsServer,
    receiver: Receiver,
    bridge_processes: list[BridgeProcess],
) -> None:
    sidecar, held = await killed_holding(tmp_path, nats_server, receiver, bridge_processes)
    await sidecar.start()
    await wait_until(lambda: awaiting(sidecar), 10, interval=0.05)
    everything = {*FIRST, *LATER}
    await wait_until(lambda: set(receiver.accepted_ids()) == everything, 30, interval=0.1)
    delivered_once_in_order(receiver)
    (awaited,) = sidecar.log_events("nats.awaiting_redelivery")
    assert awaited["count"] == held
    assert awaited["ack_wait"] == ACK_WAIT
    assert "stream order" in awaited["hint"]
    (done,) = sidecar.log_events("nats.redelivery_awaited")
    assert done["back"] == held
    assert (await consumer_state(sidecar))["state"] == "consuming"


@pytest.mark.timeout(60)
async def test_a_sidecar_stopped_while_it_awaits_redeliveries_leaves_newer_ones_behind_them(
    tmp_path: Path,
    nats_server: NatsServer,
    receiver: Receiver,
    bridge_processes: list[BridgeProcess],
) -> None:
    sidecar, _ = await killed_holding(tmp_path, nats_server, receiver, bridge_processes)
    await sidecar.start()

    async def holding_newer() -> bool:  # LATER fetched, held behind what is awaited
        state = await consumer_state(sidecar)
        return bool(state["state"] == "awaiting_redelivery" and state["held"] == len(LATER))

    await wait_until(holding_newer, 10, interval=0.05)
    sidecar.current.signal(signal.SIGTERM)
    # Waited for off the loop: the receiver on it must answer the deliveries the stop drains,
    # or their outcome is unknown and they are made again after the restart.
    assert await sidecar.current.exited() == 0
    await sidecar.start()
    everything = {*FIRST, *LATER}
    await wait_until(lambda: set(receiver.accepted_ids()) == everything, 30, interval=0.1)
    delivered_once_in_order(receiver)


class SlowDownlink(LoopbackRelay):
    """A TCP relay to a NATS server that passes what the server sends a chunk at a time, with a
    pause between chunks, as a slow link would: a batch of messages reaches the client over
    seconds. (The pauses pace the link; nothing waits on them.)"""

    CHUNK = 1024
    PAUSE = 0.05

    async def __aenter__(self) -> SlowDownlink:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
        shared: Any,
    ) -> None:
        while data := await reader.read(self.CHUNK if downstream else 65536):
            writer.write(data)
            await writer.drain()
            if downstream:
                await asyncio.sleep(self.PAUSE)


async def test_a_stop_in_the_middle_of_a_pull_naks_what_the_pull_received(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    ids = [f"evt_{i:03}" for i in range(100)]  # one batch, about 2 s over the slow link
    await create_stream(nats_server)
    await publish(nats_server, {i: event_body(i) for i in ids})
    async with SlowDownlink(nats_server.port) as link:
        section = {"servers": [link.url], "consume": {"ack_wait": "30s"}}
        config = sidecar_config(tmp_path, nats_server, nats=section)
        async with running_bridge(config):

            async def all_sent() -> bool:  # by the server, into the slow link
                with contextlib.suppress(NotFoundError):  # not created yet
                    return (await consumer_info(nats_server)).num_ack_pending == len(ids)
                return False

            await wait_until(all_sent, 10)
        # Stopped while the batch was still arriving, nothing of it stored yet.
        assert not (tmp_path / "events.jsonl").exists()
    # What the pull had received was nak'd: given again at once, not after 30 s.
    assert await next_at_once(nats_server) == 1


# --- the gate, on its own ----------------------------------------------------------------------


def info_with(ack_pending: int) -> ConsumerInfo:
    return ConsumerInfo(
        name="agent-support",
        stream_name="OPENMAIL",
        config=ConsumerConfig(durable_name="agent-support"),
        created=datetime.now(UTC),
        delivered=SequenceInfo(consumer_seq=40, stream_seq=40),
        num_ack_pending=ack_pending,
    )


def delivery(stream_seq: int, times: int) -> Delivery:
    return Delivery(consumer_seq=100 + stream_seq, stream_seq=stream_seq, times=times, pending=0)


def test_the_deliveries_this_process_holds_itself_are_never_awaited() -> None:
    gate = RedeliveryGate(clock=FakeTime())
    gate.bound(info_with(ack_pending=5), own=5, ack_wait=30.0)
    assert not gate.closed
    gate.bound(info_with(ack_pending=7), own=5, ack_wait=30.0)
    assert gate.awaited == 2


def test_the_gate_opens_when_every_awaited_delivery_is_back() -> None:
    gate = RedeliveryGate(clock=FakeTime())
    gate.bound(info_with(ack_pending=2), own=0, ack_wait=30.0)
    assert not gate.storable(delivery(41, times=1))
    assert gate.storable(delivery(3, times=2))
    gate.fetched([delivery(41, times=1), delivery(42, times=1)])  # newer ones came first
    assert gate.closed
    gate.fetched([delivery(3, times=2), delivery(4, times=2), delivery(43, times=1)])
    assert not gate.closed
    assert gate.storable(delivery(41, times=1))


def test_past_ack_wait_the_first_fetch_bringing_a_first_delivery_or_nothing_opens_it() -> None:
    clock = FakeTime()
    gate = RedeliveryGate(clock=clock)
    gate.bound(info_with(ack_pending=3), own=0, ack_wait=30.0)
    gate.fetched([])  # nothing yet, and not yet due
    assert gate.closed
    clock.advance_to(clock.now + 30.0 + MARGIN)
    gate.fetched([delivery(3, times=2)])  # the server still hands out expired ones
    assert gate.closed
    gate.fetched([delivery(41, times=1)])  # none left ahead of this one: settled elsewhere
    assert not gate.closed
