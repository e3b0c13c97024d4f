"""SIGKILL during delivery, restart: every event reaches every sink at least once, and the only
duplicates are deliveries that were in flight at the kill, carrying the same ``X-Event-Id``."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.simulator import Simulator
from tests.conftest import (
    AGENT_SECRET,
    BridgeProcess,
    Receiver,
    bridge_config_dict,
    read_lines,
    start_bridge_process,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(60)]

CONCURRENCY = 4
THREADS = 10
PER_THREAD = 10


@pytest.fixture
async def slow_receiver() -> AsyncIterator[Receiver]:
    r = Receiver(secret=AGENT_SECRET, delay=0.2)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def start(config: Path, sim: Simulator, procs: list[BridgeProcess]) -> BridgeProcess:
    before = {c.id for c in sim.connections}
    bp = start_bridge_process(config)
    procs.append(bp)
    try:
        await wait_until(
            lambda: any(c.subscribed and c.id not in before for c in sim.connections), timeout=15
        )
    except AssertionError:
        tail = bp.stderr_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"bridge not subscribed (exit {bp.proc.poll()}):\n{tail}") from None
    return bp


def first_occurrences(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


async def test_sigkill_during_delivery_then_restart_delivers_everything_at_least_once(
    tmp_path: Path,
    sim: Simulator,
    slow_receiver: Receiver,
    bridge_processes: list[BridgeProcess],
) -> None:
    receiver = slow_receiver
    events_file = tmp_path / "events.jsonl"
    sinks = {
        "agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET,
                  "concurrency": CONCURRENCY, "retry": {"initial": "50ms", "max": "300ms"}},
        "audit": {"type": "file", "path": str(events_file), "concurrency": CONCURRENCY},
    }  # fmt: skip
    config = write_config(tmp_path / "config.yaml", bridge_config_dict(tmp_path, sim, sinks=sinks))

    first = await start(config, sim, bridge_processes)
    threads = [f"thr_kill_{n}" for n in range(THREADS)]
    sent: dict[str, list[str]] = {t: [] for t in threads}
    for _ in range(PER_THREAD):
        for n, thread in enumerate(threads):
            inbox = sim.inboxes[n % len(sim.inboxes)]
            sent[thread].append(await sim.inject(inbox_id=inbox, thread_id=thread))
    everything = {e for ids in sent.values() for e in ids}
    assert len(everything) == THREADS * PER_THREAD

    # Kill while the slow receiver is mid-way: some deliveries done, some in flight, most queued.
    await wait_until(lambda: len(receiver.received) >= 20, timeout=15)
    first.signal(signal.SIGKILL)
    in_flight = {r.json["event_id"] for r in receiver.received} - set(receiver.accepted_ids())
    assert 1 <= len(in_flight) <= CONCURRENCY  # the kill did land mid-delivery
    assert len(set(receiver.accepted_ids())) < len(everything)
    assert await asyncio.to_thread(first.wait, 10) == -signal.SIGKILL
    # Requests the bridge wrote just before dying may still sit in the receiver's socket buffer:
    # let them arrive, then note everything that was sent before the kill.
    await asyncio.sleep(0.1)
    received_at_kill = {r.json["event_id"] for r in receiver.received}
    file_at_kill = {line["event_id"] for line in read_lines(events_file)}

    second = await start(config, sim, bridge_processes)
    await wait_until(lambda: set(receiver.accepted_ids()) == everything, timeout=20)
    await wait_until(
        lambda: {line["event_id"] for line in read_lines(events_file)} == everything, timeout=10
    )
    second.signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 15) == 0

    # HTTP sink: duplicates only for what the receiver had seen when the bridge died, at most one
    # extra copy per delivery in flight, each copy with the same X-Event-Id.
    accepted = receiver.accepted_ids()
    extra = Counter(accepted) - Counter(set(accepted))
    assert set(extra) <= received_at_kill
    assert sum(extra.values()) <= CONCURRENCY
    for item in receiver.accepted:
        assert item.headers["X-Event-Id"] == item.json["event_id"]
    assert receiver.bad_signatures == 0
    for thread, ids in sent.items():  # first copies still arrive in thread order
        got = [r.json["event_id"] for r in receiver.accepted if r.json["thread_id"] == thread]
        assert first_occurrences(got) == ids, thread

    # File sink: the same bound; a duplicate line is one written before the kill.
    lines = [line["event_id"] for line in read_lines(events_file)]
    extra_lines = Counter(lines) - Counter(set(lines))
    assert set(extra_lines) <= file_at_kill
    assert sum(extra_lines.values()) <= CONCURRENCY
    assert "bridge.stopped" in second.log_events()
