"""A bridge killed with SIGKILL in the middle of a stream, then restarted on the same state: nothing
the simulator saw acknowledged is lost, and nothing is stored twice.

Acknowledged means a webhook attempt answered 2xx, or a WebSocket frame delivered at or before the
replay cursor the dead bridge left in its database.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    WEBHOOK_SECRET,
    BridgeProcess,
    bridge_config_dict,
    free_port,
    read_lines,
    start_bridge_process,
    wait_until,
    write_config,
)

from bridge.simulator import Simulator

pytestmark = [pytest.mark.system, pytest.mark.timeout(30)]

WS_INBOX, WEBHOOK_INBOX = "inb_demo_support", "inb_demo_sales"


def read_db(db: Path) -> tuple[list[str], str | None]:
    """The seen ids and the replay cursor, read as another process would after the crash."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        seen = [row[0] for row in conn.execute("SELECT event_id FROM seen")]
        row = conn.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    finally:
        conn.close()
    return seen, None if row is None else str(row[0])


def acknowledged(sim: Simulator, cursor: str | None) -> tuple[set[str], set[str]]:
    """(webhook ids answered 2xx, WebSocket ids delivered up to and including ``cursor``)."""
    hooks = {d.event_id for d in sim.deliveries if d.channel == "webhook" and d.error is None}
    frames = [d.event_id for d in sim.deliveries if d.channel == "websocket" and d.error is None]
    ws = set(frames[: frames.index(cursor) + 1]) if cursor in frames else set()
    return hooks, ws


async def stream(sim: Simulator, injected: list[str], stop: asyncio.Event) -> None:
    """Alternate the two inboxes: one reaches the bridge by WebSocket, the other by webhook."""
    n = 0
    while not stop.is_set():
        injected.append(await sim.inject(inbox_id=(WS_INBOX, WEBHOOK_INBOX)[n % 2]))
        n += 1
        await asyncio.sleep(0.01)


def accepted_counts(runs: list[BridgeProcess]) -> Counter[str]:
    return Counter(
        entry["event_id"]
        for run in runs
        for entry in run.logs()
        if entry.get("event") == "event.accepted"
    )


async def test_sigkill_mid_stream_loses_nothing_acknowledged(
    sim: Simulator, tmp_path: Path, bridge_processes: list[BridgeProcess]
) -> None:
    port = free_port()
    config: dict[str, Any] = bridge_config_dict(
        tmp_path,
        sim,
        openmail={
            "websocket": {"inbox_ids": [WS_INBOX]},
            "webhook": {"listen": f"127.0.0.1:{port}"},
        },
        routes=[{"name": "all", "sinks": ["audit"]}],
        log={"level": "info", "format": "json"},
    )
    path = write_config(tmp_path / "config.yaml", config)
    db = tmp_path / "state" / "bridge.db"
    sim.set_webhook(f"http://127.0.0.1:{port}/webhooks", WEBHOOK_SECRET)

    def subscribed() -> bool:
        return any(c.subscribed for c in sim.connections)

    first = start_bridge_process(path)
    bridge_processes.append(first)
    await wait_until(subscribed, timeout=15)

    injected: list[str] = []
    stop = asyncio.Event()
    feeder = asyncio.create_task(stream(sim, injected, stop))
    try:
        # Kill once both channels have had acknowledged traffic, with the stream still running.
        def both_channels_busy() -> bool:
            hooks, _ = acknowledged(sim, None)
            frames = sum(d.channel == "websocket" for d in sim.deliveries)
            return len(hooks) >= 10 and frames >= 10

        await wait_until(both_channels_busy, timeout=10)
        first.signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
        assert first.proc.returncode == -signal.SIGKILL

        seen, cursor = read_db(db)
        hooks, frames = acknowledged(sim, cursor)
        assert cursor is not None
        assert frames, "the WebSocket had committed events before the kill"
        assert not (hooks | frames) - set(seen), "acknowledged before the kill, missing after it"

        await asyncio.sleep(0.3)  # the stream goes on while no bridge runs
        second = start_bridge_process(path)
        bridge_processes.append(second)
        await wait_until(subscribed, timeout=15)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await feeder

    # Let OpenMail finish its webhook retries (scaled down in the simulator fixture).
    await wait_until(lambda: sim.pending_webhooks == 0, timeout=15)
    hooks, _ = acknowledged(sim, None)
    ws_targeted = [str(ev["event_id"]) for ev in sim.events if ev["inbox_id"] == WS_INBOX]
    must_have = hooks | set(
        ws_targeted
    )  # every WebSocket event comes back by replay after the restart

    def stored() -> set[str]:
        return set(read_db(db)[0])

    await wait_until(lambda: must_have <= stored(), timeout=10)
    assert stored() <= set(injected)
    lines = tmp_path / "events.jsonl"
    await wait_until(
        lambda: {line["event_id"] for line in read_lines(lines)} >= stored(), timeout=10
    )

    # The scenario exercised both recovery paths: OpenMail retried webhooks that failed while no
    # bridge ran, and the restarted bridge's cursor made it replay.
    assert any(d.channel == "webhook" and d.error is not None for d in sim.deliveries)
    assert any(d.replay for d in sim.deliveries)

    second.signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 15) == 0

    # Stored once: across both runs no event was accepted twice (a second arrival, by replay,
    # by OpenMail's retry or by the other channel, is a duplicate).
    counts = accepted_counts([first, second])
    twice = {eid: n for eid, n in counts.items() if n > 1}
    assert not twice, f"accepted more than once: {twice}"
    assert set(counts) <= stored()
    assert read_db(db)[1] == ws_targeted[-1]  # the cursor caught up with the stream
