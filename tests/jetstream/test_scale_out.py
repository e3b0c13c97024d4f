"""Scale-out on JetStream with real processes: edge bridges subscribed to the OpenMail simulator
publish into one stream, a sidecar bridge consumes it into an agent's HTTP receiver; edges, the
sidecar, the nats-server and a cluster node are killed or stopped on the way.

Every bridge is ``python -m bridge run`` in a subprocess; the simulator, the receivers and the
checks run here. Checks are on exact sets of event ids: in the stream (one message per
``Nats-Msg-Id``) and at the receiver. Random choices come from a printed seed
(``$OPENMAIL_FAULT_SEED`` replays one).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import nats.errors
import pytest
from nats.js.api import StorageType, StreamConfig

from bridge.simulator import Simulator
from tests.conftest import (
    AGENT_SECRET,
    WEBHOOK_SECRET,
    BridgeProcess,
    Receiver,
    bridge_config_dict,
    free_port,
    signed,
    wait_until,
)
from tests.system._harness import (
    Bridge,
    Emitter,
    admin_get,
    exactly_once_problems,
    log_time,
    scenario_seed,
)

from .conftest import NatsServer, nats_client, nats_section, sidecar_raw, stream_messages

pytestmark = [pytest.mark.system, pytest.mark.timeout(90)]

OUTAGE_SECONDS = 3.0
"""How long the nats-server stays down in the outage scenario (30 s and more work the same)."""
RETRY = {"initial": "50ms", "max": "300ms"}
"""Sink retries short enough that recovery after an outage or a kill takes a blink."""
SETTLE = 30.0
"""The bound on every wait for a flow to complete."""
SIDECAR_CONCURRENCY = 8
"""Deliveries a sidecar has under way at once: the most a kill can leave with unknown outcome."""


# --- the topology --------------------------------------------------------------------------------


def edge_bridge(
    tmp_path: Path,
    name: str,
    sim: Simulator,
    servers: NatsServer | Sequence[NatsServer],
    procs: list[BridgeProcess],
    stream: dict[str, Any] | None = None,
    **nats: Any,
) -> Bridge:
    """An edge: the simulator's WebSocket and a webhook listener on a fixed port (where the
    simulator's webhook retries go across restarts), publishing every event to the stream."""
    raw = bridge_config_dict(tmp_path / name, sim, log={"level": "info", "format": "json"})
    raw["openmail"]["webhook"]["listen"] = f"127.0.0.1:{free_port()}"
    raw["nats"] = nats_section(servers, **nats)
    raw["nats"]["stream"].update(stream or {})
    raw["sinks"] = {"bus": {"type": "nats", "timeout": "1s", "retry": RETRY}}
    return Bridge(tmp_path / f"{name}.yaml", raw, procs)


def sidecar_bridge(
    tmp_path: Path, server: NatsServer, receiver: Receiver, procs: list[BridgeProcess]
) -> Bridge:
    """A pure sidecar consuming the whole stream into ``receiver``, signed with AGENT_SECRET."""
    raw = sidecar_raw(tmp_path / "sidecar", server, consume={"ack_wait": "2s"})
    raw["log"] = {"level": "info", "format": "json"}
    raw["sinks"] = {
        "agent": {
            "type": "http",
            "url": receiver.url,
            "secret": AGENT_SECRET,
            "concurrency": SIDECAR_CONCURRENCY,
            "retry": RETRY,
        }
    }
    return Bridge(tmp_path / "sidecar.yaml", raw, procs)


async def two_edges(
    tmp_path: Path, sim: Simulator, server: NatsServer, procs: list[BridgeProcess]
) -> list[Bridge]:
    """Edges A and B on one nats-server, started and both subscribed."""
    edges = [edge_bridge(tmp_path, name, sim, server, procs) for name in ("edge_a", "edge_b")]
    for edge in edges:
        await edge.start()
    await all_subscribed(sim, edges)
    return edges


def subscribed_count(sim: Simulator) -> int:
    return sum(1 for info in sim.connections if info.subscribed)


async def all_subscribed(sim: Simulator, edges: Sequence[Bridge]) -> None:
    try:
        await sim.wait_for(lambda: subscribed_count(sim) == len(edges), 15)
    except TimeoutError:
        tails = "\n".join(edge.tail(15) for edge in edges)
        raise AssertionError(
            f"{subscribed_count(sim)} of {len(edges)} subscribed:\n{tails}"
        ) from None


async def pending(bridge: Bridge, sink: str) -> int:
    status = await admin_get(bridge, "/status")
    return int(status["sinks"][sink]["pending"])


# --- reading the stream --------------------------------------------------------------------------


async def stream_count(servers: Sequence[NatsServer]) -> int:
    async with nats_client(servers[0], servers=[s.url for s in servers]) as client:
        info = await client.jetstream().stream_info("OPENMAIL")
    return int(info.state.messages)


async def stream_has(servers: Sequence[NatsServer], count: int) -> bool:
    try:
        return await stream_count(servers) >= count
    except (nats.errors.Error, TimeoutError):  # no stream yet, or a cluster electing a leader
        return False


async def stream_ids(servers: Sequence[NatsServer]) -> list[str]:
    """Every message's ``Nats-Msg-Id`` in stream order, after checking that it is the event's own
    id, in ``X-Event-Id`` and in the unchanged body alike."""
    messages: list[Any] = []

    async def read() -> bool:
        try:
            async with nats_client(servers[0], servers=[s.url for s in servers]) as client:
                messages[:] = await stream_messages(client.jetstream())
        except (nats.errors.Error, TimeoutError):  # a cluster electing a leader answers 503
            return False
        return True

    await wait_until(read, SETTLE, interval=0.1)
    ids: list[str] = []
    for msg in messages:
        headers = msg.headers or {}
        msg_id = headers.get("Nats-Msg-Id")
        assert msg_id == headers.get("X-Event-Id") == json.loads(msg.data)["event_id"], msg.seq
        ids.append(str(msg_id))
    return ids


async def stream_settled(
    servers: Sequence[NatsServer], edges: Sequence[Bridge], expected: set[str]
) -> None:
    """Wait until the stream holds at least ``expected`` many messages and no edge has anything
    left to publish, so that a late duplicate would show too."""

    async def done() -> bool:
        if not await stream_has(servers, len(expected)):
            return False
        for edge in edges:
            if await pending(edge, "bus"):
                return False
        return True

    try:
        await wait_until(done, SETTLE, interval=0.1)
    except AssertionError:
        ids = await stream_ids(servers)
        problems = exactly_once_problems(ids, expected)
        tails = "\n".join(edge.tail(10) for edge in edges)
        raise AssertionError(f"stream not settled: {problems}\n{tails}") from None


async def assert_stream_once(
    servers: Sequence[NatsServer], edges: Sequence[Bridge], expected: set[str], seed: int = 0
) -> list[str]:
    await stream_settled(servers, edges, expected)
    ids = await stream_ids(servers)
    assert exactly_once_problems(ids, expected) is None, (
        f"seed={seed}: {exactly_once_problems(ids, expected)}"
    )
    return ids


def thread_order_problems(ids: Sequence[str], sent: dict[str, list[str]]) -> dict[str, int]:
    """Threads whose events (first copies, in the order of ``ids``) are not in the order they
    were sent: thread -> the first position where they differ."""
    thread_of = {event_id: thread for thread, events in sent.items() for event_id in events}
    got: dict[str, list[str]] = {thread: [] for thread in sent}
    for event_id in dict.fromkeys(ids):
        if event_id in thread_of:
            got[thread_of[event_id]].append(event_id)
    return {
        thread: next(i for i, (a, b) in enumerate(zip(got[thread], events, strict=False)) if a != b)
        if len(got[thread]) == len(events)
        else min(len(got[thread]), len(events))
        for thread, events in sent.items()
        if got[thread] != events
    }


async def inject_threads(
    sim: Simulator, threads: Sequence[str], count: int, sent: dict[str, list[str]]
) -> None:
    """Inject ``count`` events round-robin over ``threads`` and both inboxes, noting each id
    under its thread."""
    for n in range(count):
        thread = threads[n % len(threads)]
        inbox = sim.inboxes[n % len(sim.inboxes)]
        sent.setdefault(thread, []).append(await sim.inject(inbox_id=inbox, thread_id=thread))


# --- 1. two edges, one sidecar -------------------------------------------------------------------

WS_EVENTS = 1800
HOOK_EVENTS = 200
WS_THREADS = 40


async def test_two_edges_and_a_sidecar_carry_every_event_once_in_thread_order(
    tmp_path: Path,
    sim: Simulator,
    nats_server: NatsServer,
    receiver: Receiver,
    bridge_processes: list[BridgeProcess],
) -> None:
    """Both edges receive every WebSocket event and publish it; while the WebSockets are down
    OpenMail sends by webhook to edge A. The stream holds each event once; the sidecar hands each
    to the agent once, re-signed, and a WebSocket thread's events in the order they happened."""
    edges = await two_edges(tmp_path, sim, nats_server, bridge_processes)
    sim.set_webhook(edges[0].webhook_url, WEBHOOK_SECRET)
    sidecar = sidecar_bridge(tmp_path, nats_server, receiver, bridge_processes)
    await sidecar.start()

    ws_threads = [f"thr_ws_{i:02}" for i in range(WS_THREADS)]
    sent: dict[str, list[str]] = {}
    await inject_threads(sim, ws_threads, WS_EVENTS // 2, sent)

    # The WebSockets go down and stay refused: OpenMail falls back to the webhook (edge A only).
    sim.refuse(60)
    await sim.disconnect()
    await sim.wait_for(lambda: subscribed_count(sim) == 0, 10)
    hooked: dict[str, list[str]] = {}
    await inject_threads(sim, [f"thr_hook_{i}" for i in range(5)], HOOK_EVENTS, hooked)
    hook_ids = {e for ids in hooked.values() for e in ids}

    def hooks_done() -> bool:
        ok = {r.event_id for r in sim.deliveries if r.channel == "webhook" and r.status == 200}
        return hook_ids <= ok

    await sim.wait_for(hooks_done, SETTLE)
    sim.refuse(0)
    await all_subscribed(sim, edges)  # each edge replays from its own cursor, webhook events too
    await inject_threads(sim, ws_threads, WS_EVENTS - WS_EVENTS // 2, sent)

    ws_ids = {e for ids in sent.values() for e in ids}
    everything = ws_ids | hook_ids
    assert len(everything) == WS_EVENTS + HOOK_EVENTS
    stream = await assert_stream_once([nats_server], edges, everything)
    assert thread_order_problems(stream, sent) == {}
    # Both edges published every WebSocket event; the stream took one copy of each.
    publishes = [(await admin_get(edge, "/status"))["nats"]["publishes"]["bus"] for edge in edges]
    assert all(p["acked"] + p["duplicate"] >= len(ws_ids) for p in publishes), publishes
    assert sum(p["duplicate"] for p in publishes) >= len(ws_ids), publishes

    try:
        await wait_until(lambda: len(receiver.accepted) >= len(everything), SETTLE, interval=0.1)
    except AssertionError:
        problems = exactly_once_problems(receiver.accepted_ids(), everything)
        raise AssertionError(f"receiver: {problems}\n{sidecar.tail()}") from None
    assert await pending(sidecar, "agent") == 0
    got = receiver.accepted_ids()
    assert exactly_once_problems(got, everything) is None, exactly_once_problems(got, everything)
    assert receiver.bad_signatures == 0
    assert thread_order_problems(got, sent) == {}
    for item in receiver.accepted:
        event_id = item.json["event_id"]
        assert item.headers["X-Event-Id"] == event_id
        if event_id in ws_ids:  # the origin an edge received it by, not "nats"
            assert item.headers["X-OpenMail-Bridge-Source"] == "websocket", event_id
    status = await admin_get(sidecar, "/status")
    assert status["nats"]["consumer"]["pending"] == 0
    assert status["cursor"] is None  # consuming never moves a WebSocket cursor
    # The sidecar counts what it consumed as source="nats", whatever the edges received it by.
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as answer,
    ):
        metrics = await answer.text()
    counted = re.search(
        r'^openmail_bridge_events_received_total\{source="nats"\} (\S+)$', metrics, re.M
    )
    assert counted is not None
    assert float(counted[1]) >= len(everything)  # a redelivery, if any, is counted again
    assert 'openmail_bridge_events_received_total{source="websocket"}' not in metrics


# --- 2. an edge killed and restarted, three times ------------------------------------------------

KILL_ROUNDS = 3
KILL_RATE = 250.0
"""Events per second while edges are being killed."""
STRETCH = 350
"""Events per kill round: the kill, the time dead, the restart and its replay fit in it."""


async def test_an_edge_killed_mid_stream_and_restarted_loses_and_doubles_nothing(
    tmp_path: Path,
    sim: Simulator,
    nats_server: NatsServer,
    bridge_processes: list[BridgeProcess],
) -> None:
    seed, rng = scenario_seed("edge-kill")
    edges = await two_edges(tmp_path, sim, nats_server, bridge_processes)

    # Kill points are drawn up front, one per stretch of the stream; events keep coming meanwhile.
    plan = [
        (rng.choice(edges), STRETCH * n + rng.randint(50, 150), rng.randint(20, 100))
        for n in range(KILL_ROUNDS)
    ]
    emitter = Emitter(sim, random.Random(seed), threads=[f"thr_kill_{i:02}" for i in range(20)])
    emitting = asyncio.create_task(emitter.run(KILL_RATE, count=STRETCH * (KILL_ROUNDS + 1)))
    try:
        for round_, (victim, kill_at, dead_for) in enumerate(plan):
            name = victim.config_path.stem
            print(f"[edge-kill] seed={seed} round {round_}: {name} at #{kill_at}, {dead_for} dead")
            await wait_until(lambda n=kill_at: len(emitter.ids) >= n, SETTLE, interval=0.005)
            victim.kill()
            await wait_until(lambda n=kill_at + dead_for: len(emitter.ids) >= n, SETTLE)
            await victim.start()
            await all_subscribed(sim, edges)
        await emitting
    finally:
        emitting.cancel()

    await assert_stream_once([nats_server], edges, set(emitter.ids), seed)
    # Thread order is not checked here: a restarted edge whose backlog is longer than OpenMail's
    # replay page receives live events between pages, so it may publish a thread's later event
    # before an earlier one that the other edge has not published yet.


# --- 3. the nats-server down for a while ---------------------------------------------------------


@pytest.mark.parametrize("outage", [OUTAGE_SECONDS])
async def test_edges_keep_accepting_while_nats_is_down_and_publish_everything_after(
    tmp_path: Path,
    sim: Simulator,
    nats_server: NatsServer,
    bridge_processes: list[BridgeProcess],
    outage: float,
) -> None:
    _, rng = scenario_seed("nats-outage")
    edges = await two_edges(tmp_path, sim, nats_server, bridge_processes)
    emitter = Emitter(sim, rng, threads=[f"thr_out_{i}" for i in range(10)])
    before = set(await emitter.run(500, count=100))
    await assert_stream_once([nats_server], edges, before)

    nats_server.stop()
    stopped = time.monotonic()
    during = set(await emitter.run(50, duration=outage / 2))
    # OpenMail's webhook keeps being answered 200 by edge A: the spool takes it in.
    hooked: set[str] = set()
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            payload = sim.message_event()
            body = json.dumps(payload).encode()
            async with http.post(edges[0].webhook_url, data=body, headers=signed(body)) as answer:
                assert answer.status == 200, await answer.text()
            hooked.add(str(payload["event_id"]))
    during |= set(await emitter.run(50, duration=max(0.0, outage - (time.monotonic() - stopped))))
    assert not nats_server.running

    # Each edge's spool holds what came in meanwhile, and its NATS sink has been retrying.
    for edge, expected in zip(edges, (len(during) + len(hooked), len(during)), strict=True):
        await wait_until(lambda edge=edge, n=expected: _pending_is(edge, n), 10, interval=0.1)
        status = await admin_get(edge, "/status")
        assert status["state"] == "ready"  # the sources still take events in
        assert status["parts"]["nats"] == "disconnected"
        assert status["nats"]["publishes"]["bus"]["failed"] >= 1

    nats_server.start()  # same port, same store: the stream is still there
    everything = before | during | hooked
    await assert_stream_once([nats_server], edges, everything)
    for edge in edges:
        status = await admin_get(edge, "/status")
        assert status["parts"]["nats"] == "connected"


async def _pending_is(edge: Bridge, count: int) -> bool:
    return await pending(edge, "bus") == count


# --- 4. the sidecar killed and restarted ---------------------------------------------------------

SIDECAR_EVENTS = 400


async def test_a_sidecar_killed_mid_stream_and_restarted_delivers_everything(
    tmp_path: Path,
    sim: Simulator,
    nats_server: NatsServer,
    bridge_processes: list[BridgeProcess],
) -> None:
    receiver = Receiver(secret=AGENT_SECRET, delay=0.01)
    await receiver.start()
    try:
        edge = edge_bridge(tmp_path, "edge", sim, nats_server, bridge_processes)
        await edge.start()
        await all_subscribed(sim, [edge])
        sidecar = sidecar_bridge(tmp_path, nats_server, receiver, bridge_processes)
        await sidecar.start()
        sent: dict[str, list[str]] = {}
        await inject_threads(sim, [f"thr_side_{i:02}" for i in range(20)], SIDECAR_EVENTS, sent)
        everything = {e for ids in sent.values() for e in ids}

        await wait_until(lambda: len(receiver.received) >= SIDECAR_EVENTS // 3, SETTLE)
        sidecar.kill()
        assert len(set(receiver.accepted_ids())) < len(everything)  # the kill landed mid-way
        await sidecar.start()
        # Requests the killed sidecar wrote just before dying are handled here after the kill;
        # the restarted one can send nothing before its first log line.
        restarted_at = min(log_time(entry) for entry in sidecar.current.logs())
        await wait_until(lambda: set(receiver.accepted_ids()) == everything, SETTLE, interval=0.1)
        assert await pending(sidecar, "agent") == 0
    finally:
        await receiver.stop()

    # Duplicates only of deliveries under way when the sidecar died, each with its X-Event-Id.
    got = receiver.accepted_ids()
    extra = Counter(got) - Counter(set(got))
    before_restart = {r.json["event_id"] for r in receiver.received if r.at < restarted_at}
    assert set(extra) <= before_restart
    assert sum(extra.values()) <= SIDECAR_CONCURRENCY
    assert receiver.bad_signatures == 0
    for item in receiver.received:
        assert item.headers["X-Event-Id"] == item.json["event_id"]


# --- 5. a three-node cluster, one node killed ----------------------------------------------------

CLUSTER_EVENTS = 400


async def test_a_replicated_stream_loses_nothing_when_a_node_dies(
    tmp_path: Path,
    sim: Simulator,
    nats_cluster: list[NatsServer],
    bridge_processes: list[BridgeProcess],
) -> None:
    _, rng = scenario_seed("cluster-node")
    # The stream exists before the edges start (they validate it), so its leader is known: edge A
    # is given that node alone (it learns the others from it), edge B all three.
    leader = await replicated_stream(nats_cluster)
    edges = [
        edge_bridge(tmp_path, "edge_a", sim, leader, bridge_processes, {"replicas": 3}),
        edge_bridge(tmp_path, "edge_b", sim, nats_cluster, bridge_processes, {"replicas": 3}),
    ]
    for edge in edges:
        await edge.start()
    await all_subscribed(sim, edges)
    emitter = Emitter(sim, rng, threads=[f"thr_r3_{i}" for i in range(10)])
    emitting = asyncio.create_task(emitter.run(200, count=CLUSTER_EVENTS))
    try:
        await wait_until(lambda: stream_has(nats_cluster, CLUSTER_EVENTS // 4), SETTLE)
        leader.kill()  # mid-stream: the other two elect a new leader, edge A reconnects
        await emitting
    finally:
        emitting.cancel()
    assert len(emitter.ids) == CLUSTER_EVENTS

    survivors = [node for node in nats_cluster if node is not leader]
    await assert_stream_once(survivors, edges, set(emitter.ids))
    async with nats_client(survivors[0], servers=[n.url for n in survivors]) as client:
        info = await client.jetstream().stream_info("OPENMAIL")
    assert info.cluster is not None
    assert info.cluster.leader in {node.name for node in survivors}
    moved = (await admin_get(edges[0], "/status"))["nats"]["connection"]
    assert moved["server"] in {node.url for node in survivors}, moved
    assert moved["reconnects"] >= 1, moved
    for edge in edges:
        # Whatever the stream check met during the election, a status read checks it again (at
        # most once a second, the next in the background): it is valid again within moments.
        async def valid(edge: Any = edge) -> bool:
            stream = (await admin_get(edge, "/status"))["nats"]["stream"]
            return stream["problem"] is None and stream["check"] == "valid"

        await wait_until(valid, 10)


async def replicated_stream(cluster: Sequence[NatsServer]) -> NatsServer:
    """Create the stream as the edges are configured (R=3); the node leading it."""
    config = StreamConfig(
        name="OPENMAIL",
        subjects=["openmail.>"],
        duplicate_window=120,
        num_replicas=3,
        storage=StorageType.FILE,
    )
    async with nats_client(cluster[0], servers=[n.url for n in cluster]) as client:
        js = client.jetstream()

        async def led() -> bool:
            try:
                await js.add_stream(config)
                info = await js.stream_info("OPENMAIL")
            except (nats.errors.Error, TimeoutError):  # the cluster still electing
                return False
            return info.cluster is not None and info.cluster.leader is not None

        await wait_until(led, SETTLE, interval=0.1)
        info = await js.stream_info("OPENMAIL")
    assert info.cluster is not None
    [leader] = [node for node in cluster if node.name == info.cluster.leader]
    return leader


# --- 6. a wrong credential, seen from outside ----------------------------------------------------

WRONG_TOKEN = "wrong-token-5d0e8a"


async def test_an_edge_with_a_wrong_credential_says_so_naming_the_server_and_stays_ready(
    tmp_path: Path,
    sim: Simulator,
    make_nats_server: Any,
    bridge_processes: list[BridgeProcess],
) -> None:
    server: NatsServer = make_nats_server("--auth", "right-token-0b9f27")
    edge = edge_bridge(tmp_path, "edge", sim, server, bridge_processes, token=WRONG_TOKEN)
    await edge.start()
    await wait_until(lambda: bool(edge.log_events("nats.auth_failed")), 10)
    [failed] = edge.log_events("nats.auth_failed")
    assert failed["level"] == "error"
    assert failed["server"] == server.url
    readiness: list[dict[str, Any]] = []

    async def ready() -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{edge.admin_port}/readyz") as answer,
        ):
            readiness.append(await answer.json())
            return answer.status == 200 and readiness[-1]["status"] == "ready"

    # Ready once the WebSocket has subscribed: the sink's refused credential does not count.
    await wait_until(ready, 10, interval=0.1)
    assert readiness[-1]["nats"] == "auth_failed"
    assert WRONG_TOKEN not in edge.current.stderr_path.read_text()
