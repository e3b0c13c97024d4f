"""Rows left in the store past the parked bound are read again by a rescan; a ``dlq retry``
picked up while that rescan reads must not be lost between the two (a real store; the rescan's
read is held open by a gate so that the redrive lands inside it)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import structlog
from conftest import wait_until
from test_hold import mail

from bridge.intake import Intake
from bridge.store import Store

T0 = 1_800_000_000.0


async def test_a_redrive_during_a_rescan_is_read_again(tmp_path: Path) -> None:
    now = [T0]
    db = tmp_path / "bridge.db"
    store = await Store.open(db, clock=lambda: now[0])
    try:
        threads = ["thr_a", "thr_b", "thr_c", "thr_a"]
        rows = [
            (await store.accept(mail(f"evt_{n}", thread=thread), ["agent"])).deliveries[0]
            for n, thread in enumerate(threads, start=1)
        ]
        first, b, c, later_a = rows
        await store.dead_letter(first.id, error="HTTP 500", attempts=3)
        with sqlite3.connect(db) as conn:  # holds as a rate limit would have set them
            for row, due in ((b, T0 + 120), (c, T0 + 3600), (later_a, T0 + 3600)):
                conn.execute("UPDATE deliveries SET not_before = ? WHERE id = ?", (due, row.id))
        intake = Intake(store, "agent", "thread", window=10, parked=2, clock=lambda: now[0],
                        log=structlog.get_logger())  # fmt: skip
        await intake.load(after_seq=0)
        assert intake.skipped.since == later_a.seq  # past the bound of two: left in the store

        now[0] = T0 + 61  # b comes near: read back, then delivered
        await intake.unpark(now[0])
        assert intake.parked.accepting
        taken = intake.lanes.take(now[0], batch=10, windows=False)
        await store.mark_delivered_many([d.id for _, d in taken])
        intake.settle(taken)

        gate = asyncio.Event()
        reading = asyncio.Event()
        real_pending = store.pending

        async def held_open(sink: str, *, after_seq: int = 0, limit: int = 1000) -> list:  # type: ignore[type-arg]
            rows = await real_pending(sink, after_seq=after_seq, limit=limit)
            reading.set()
            await gate.wait()
            return rows

        store.pending = held_open  # type: ignore[method-assign]
        rescan = asyncio.create_task(intake.rescan())
        await reading.wait()
        store.pending = real_pending  # type: ignore[method-assign]
        assert await store.dlq_retry(sink="agent") == 1  # what `openmail-bridge dlq retry` does
        resync = asyncio.create_task(intake.resync())
        # The redriven row is behind its lane's row left in the store: resync leaves it too.
        await wait_until(lambda: intake.skipped.since == first.seq)
        gate.set()
        await rescan
        await resync
        for hour in range(1, 3):  # the worker goes on: refills and read-backs, hours on
            now[0] = T0 + 3600 * hour + 61
            await intake.refill()
            await intake.unpark(now[0])
        assert first.id in intake.lanes.known or first.id in intake.parked
    finally:
        await store.close()
