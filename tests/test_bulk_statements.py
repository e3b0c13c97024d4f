"""Work whose size has no bound of its own runs as statements of at most ``ROWS_PER_STATEMENT``
rows each (the write connection keeps each statement's journal in memory until it ends): with the
bound made 3, a `dlq retry`, a `dlq purge`, a dropped sink, a quarantine purge, a lowered history
bound and a large batch of marks each still change every row they match, once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.events import Event, Origin, parse_event
from bridge.store import AcceptOutcome, Store, StoreLimits, queries

NOW = 1_800_000_000.0
SINKS = ["agent", "audit"]


@pytest.fixture(autouse=True)
def three_rows_per_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "ROWS_PER_STATEMENT", 3)


def event(n: int, *, subject: str = "order") -> Event:
    body = {
        "event": "message.received",
        "event_id": f"evt_{n}",
        "inbox_id": "inbox-1",
        "thread_id": f"th-{n}",
        "message": {"id": f"msg_{n}", "from": "a@example.com", "subject": subject},
    }
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK, received_at=NOW - 5)


def count(db: Path, sql: str) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute(sql).fetchone()[0])


@contextlib.asynccontextmanager
async def opened(db: Path, *, history: int = 1000) -> AsyncIterator[Store]:
    store = await Store.open(db, StoreLimits(min_free=0, history=history), clock=lambda: NOW)
    try:
        yield store
    finally:
        await store.close()


async def test_dead_letters_are_retried_and_purged_whatever_their_number(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    async with opened(db) as store:
        rows = [(await store.accept(event(n), SINKS)).deliveries for n in range(10)]
        for agent, _ in rows:
            await store.dead_letter(agent.id, error="HTTP 400", attempts=1)
        assert await store.dlq_retry(sink="agent") == 10
        assert [d.event_id for d in await store.pending("agent")] == [f"evt_{n}" for n in range(10)]
        for agent, _ in rows:
            await store.dead_letter(agent.id, error="HTTP 400", attempts=1)
        assert await store.dlq_retry(event_id="evt_4") == 1
        assert await store.dlq_purge(sink="agent") == 9
        assert [d.event_id for d in await store.pending("agent")] == ["evt_4"]
        # Every event still has its audit row: none left the spool.
        assert count(db, "SELECT COUNT(*) FROM events") == 10
        assert await store.drop_sink("audit") == 10
        # Nine events have no row left: they went, in bounded statements too.
        assert count(db, "SELECT COUNT(*) FROM events") == 1
        assert store.spool_bytes == len(event(4).raw)


async def test_a_purge_changes_at_most_rows_per_statement_in_each_statement(tmp_path: Path) -> None:
    """Each statement's journal holds the pages it changes until it ends: ten dead rows go in
    four statements of at most three, and their events with the last of their rows."""
    async with opened(tmp_path / "bridge.db") as store:
        rows = [(await store.accept(event(n), ["agent"])).deliveries for n in range(10)]
        for (row,) in rows:
            await store.dead_letter(row.id, error="HTTP 400", attempts=1)
        statements: list[str] = []
        loop, res = asyncio.get_running_loop(), store._res  # the connection lives on its thread
        await loop.run_in_executor(res.writer, res.wconn.set_trace_callback, statements.append)
        assert await store.dlq_purge() == 10
        await loop.run_in_executor(res.writer, res.wconn.set_trace_callback, None)
        deletes = [s for s in statements if s.lstrip().startswith("DELETE FROM deliveries")]
        assert len(deletes) == 4
        assert store.spool_bytes == 0


async def test_every_quarantined_event_is_purged(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    async with opened(db) as store:
        for n in range(8):
            await store.accept(event(n), ["agent"])
            again = await store.accept(event(n, subject="other"), ["agent"])
            assert again.outcome is AcceptOutcome.CONFLICT
        assert len(await store.quarantine_list()) == 8
        assert await store.quarantine_purge() == 8
        assert await store.quarantine_list() == []
        assert store.spool_bytes == sum(len(event(n).raw) for n in range(8))


async def test_a_lowered_history_bound_and_a_large_batch_of_marks(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    async with opened(db, history=20) as store:
        for n in range(10):
            (row,) = (await store.accept(event(n), ["agent"])).deliveries
            await store.mark_delivered(row.id)
        assert count(db, "SELECT COUNT(*) FROM history") == 10
    async with opened(db, history=2) as store:
        # One batch of 14 ids: its chunks split events delivered to both sinks, which still
        # move to the history once, naming both.
        rows = [(await store.accept(event(n), SINKS)).deliveries for n in range(10, 17)]
        await store.mark_delivered_many([d.id for pair in rows for d in pair])
        assert [(e.event_id, e.sinks) for e in await store.history()] == [
            ("evt_16", ("agent", "audit")),
            ("evt_15", ("agent", "audit")),
        ]
        assert store.spool_bytes == 0
    assert count(db, "SELECT COUNT(*) FROM history") == 2
    assert count(db, "SELECT COUNT(*) FROM delivered") == 0
