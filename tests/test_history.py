"""The history of delivered events (schema migration 3, ``state.history``): what moves there and
when, its bound, replay from it, and an upgrade from a schema-2 database that still delivers all
it held."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import (
    Receiver,
    bridge_config_dict,
    events_named,
    read_lines,
    run_cli,
    running_bridge,
    wait_until,
)
from fixtures.make_v1_db import DEAD, DELIVERED, FIXTURE, PENDING
from fixtures.upgrade_config import upgrade_config
from structlog.testing import capture_logs

from bridge.config import StateConfig, build_config
from bridge.errors import ConfigError, SpoolFullError
from bridge.events import Event, Origin
from bridge.sinks import SINK_TYPES
from bridge.store import ReplayOutcome, Store, StoreLimits, database, queries
from bridge.store.schema import MIGRATIONS, SCHEMA_VERSION

NOW = 1_800_000_000.0


def event(event_id: str, *, raw: bytes | None = None) -> Event:
    return Event(
        event_id=event_id,
        type="message.received",
        inbox_id="inbox-1",
        thread_id="th-1",
        sender="a@example.com",
        recipient="b@example.com",
        origin=Origin.WEBHOOK,
        received_at=NOW - 5,
        raw=raw if raw is not None else b'{"event_id": "%s"}' % event_id.encode(),
    )


def read_db(db: Path, sql: str) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql).fetchall()


@contextlib.asynccontextmanager
async def opened(db: Path, **limits: int) -> AsyncIterator[Store]:
    store = await Store.open(db, StoreLimits(**limits), clock=lambda: NOW)
    try:
        yield store
    finally:
        await store.close()


async def test_an_event_delivered_to_every_sink_moves_to_the_history(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    async with opened(db) as store:
        raw = b'{"event_id": "evt_a", "subject": "hello"}'
        (a, b) = (await store.accept(event("evt_a", raw=raw), ["agent", "audit"])).deliveries
        await store.mark_delivered(a.id)
        # Still held for audit: not history yet, and its spool bytes still count.
        assert await store.history() == []
        assert store.spool_bytes == len(raw)
        await store.mark_delivered(b.id)
        (past,) = await store.history()
        assert (past.event_id, past.type, past.inbox_id, past.thread_id) == (
            "evt_a",
            "message.received",
            "inbox-1",
            "th-1",
        )
        assert (past.origin, past.received_at, past.completed_at) == (Origin.WEBHOOK, NOW - 5, NOW)
        assert past.sinks == ("agent", "audit")  # delivered in two batches, both named
        assert past.payload is None  # a listing leaves payloads unread
        shown = await store.history_event("evt_a")
        assert shown is not None
        assert shown.payload == raw
        # History is bounded by count, outside the spool bound.
        assert store.spool_bytes == 0
        assert read_db(db, "SELECT COUNT(*) FROM events") == [(0,)]
        assert read_db(db, "SELECT COUNT(*) FROM delivered") == [(0,)]
        assert await store.history(sink="agent") == await store.history(sink="audit")
        assert await store.history(sink="other") == []
        assert await store.history_sinks() == {"agent", "audit"}


@pytest.mark.parametrize("batch", [1, queries.ONE_STATEMENT_FROM])
async def test_a_history_row_names_its_sinks_in_order_once_each(tmp_path: Path, batch: int) -> None:
    """Sinks delivered in the batch and sinks remembered from earlier ones, one list, sorted,
    whether the batch runs its steps one by one or as one statement."""
    async with opened(tmp_path / "sinks.db") as store:
        rows = [
            (await store.accept(event(f"evt_{n}"), ["zeta", "alpha", "mid"])).deliveries
            for n in range(batch)
        ]
        # The first event's "mid" row goes first, alone: remembered in `delivered`.
        await store.mark_delivered(rows[0][2].id)
        await store.mark_delivered_many([d.id for r in rows for d in r if d is not rows[0][2]])
        listed = await store.history(limit=batch)
        assert len(listed) == batch
        assert {past.sinks for past in listed} == {("alpha", "mid", "zeta")}


async def test_the_history_keeps_the_newest_rows_and_zero_keeps_none(tmp_path: Path) -> None:
    async with opened(tmp_path / "kept.db", history=3) as store:
        for n in range(5):
            (row,) = (await store.accept(event(f"evt_{n}"), ["agent"])).deliveries
            await store.mark_delivered(row.id)
        assert [e.event_id for e in await store.history()] == ["evt_4", "evt_3", "evt_2"]
        assert [e.event_id for e in await store.history(limit=2)] == ["evt_4", "evt_3"]
    # Set to 0 later, the rows kept before go (with their payloads) at the next delivery.
    async with opened(tmp_path / "kept.db", history=0) as store:
        (row,) = (await store.accept(event("evt_5"), ["agent"])).deliveries
        await store.mark_delivered(row.id)
        assert await store.history() == []
    assert read_db(tmp_path / "kept.db", "SELECT COUNT(*) FROM history") == [(0,)]

    db = tmp_path / "none.db"
    async with opened(db, history=0) as store:
        (a, b) = (await store.accept(event("evt_x"), ["agent", "audit"])).deliveries
        await store.mark_delivered(a.id)
        assert read_db(db, "SELECT COUNT(*) FROM delivered") == [(0,)]
        await store.mark_delivered(b.id)
        assert await store.history() == []
        assert store.spool_bytes == 0


async def test_the_history_stays_at_its_bound_across_restarts_and_other_writers(
    tmp_path: Path,
) -> None:
    """The store counts the history's rows as it writes them: the count is read again when the
    database is reopened, with a smaller bound, and when another process changed it."""
    db = tmp_path / "state.db"

    async def deliver(store: Store, *names: str) -> None:
        for name in names:
            (row,) = (await store.accept(event(name), ["agent"])).deliveries
            await store.mark_delivered(row.id)

    async with opened(db, history=4) as store:
        await deliver(store, "evt_0", "evt_1", "evt_2", "evt_3", "evt_4")
        assert read_db(db, "SELECT COUNT(*) FROM history") == [(4,)]
    async with opened(db, history=2) as store:
        await deliver(store, "evt_5")
        assert [e.event_id for e in await store.history()] == ["evt_5", "evt_4"]
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("DELETE FROM history WHERE event_id = 'evt_5'")
        await deliver(store, "evt_6")
        assert [e.event_id for e in await store.history()] == ["evt_6", "evt_4"]
        await deliver(store, "evt_7", "evt_8")
        assert [e.event_id for e in await store.history()] == ["evt_8", "evt_7"]


async def test_a_lowered_bound_trims_the_history_as_the_daemon_starts(tmp_path: Path) -> None:
    """Payloads kept under a larger ``state.history`` go when the daemon's store opens with a
    smaller one, not at its first delivery; a command's store (not exclusive) trims nothing."""
    db = tmp_path / "state.db"
    async with opened(db, history=4) as store:
        for name in ("evt_0", "evt_1", "evt_2", "evt_3", "evt_4"):
            (row,) = (await store.accept(event(name), ["agent"])).deliveries
            await store.mark_delivered(row.id)
    command = await Store.open(db, StoreLimits(history=1), exclusive=False)
    try:
        assert len(await command.history()) == 4
    finally:
        await command.close()
    async with opened(db, history=2) as store:
        assert [e.event_id for e in await store.history()] == ["evt_4", "evt_3"]
    assert read_db(db, "SELECT COUNT(*) FROM history") == [(2,)]
    async with opened(db, history=0) as store:
        assert await store.history() == []
    assert read_db(db, "SELECT COUNT(*) FROM history") == [(0,)]


async def test_an_event_whose_last_row_is_purged_is_not_history(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    async with opened(db) as store:
        (a, b) = (await store.accept(event("evt_p"), ["agent", "audit"])).deliveries
        await store.mark_delivered(a.id)
        assert read_db(db, "SELECT seq, sink FROM delivered") == [(a.seq, "agent")]
        await store.dead_letter(b.id, error="HTTP 400", attempts=1)
        assert await store.dlq_purge(sink="audit") == 1
        assert await store.history() == []
        # The event went, and with it what it remembered.
        assert read_db(db, "SELECT COUNT(*) FROM delivered") == [(0,)]


@pytest.mark.parametrize("one_statement_from", [1, 1000], ids=["one statement", "steps"])
async def test_one_batch_of_marks_settles_each_event_by_its_own_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_statement_from: int
) -> None:
    """A batch recorded delivered, its steps run as one statement or one by one: each event moves
    to the history, stays held, or is remembered as delivered by what its own rows say, whatever
    else the batch holds."""
    monkeypatch.setattr(queries, "ONE_STATEMENT_FROM", one_statement_from)
    db = tmp_path / "bridge.db"
    async with opened(db, history=10) as store:
        both = ["agent", "audit"]
        whole = (await store.accept(event("evt_whole", raw=b"w" * 10), both)).deliveries
        half = (await store.accept(event("evt_half", raw=b"h" * 20), both)).deliveries
        dead = (await store.accept(event("evt_dead", raw=b"d" * 40), both)).deliveries
        gone = (await store.accept(event("evt_gone", raw=b"g" * 80), both)).deliveries
        await store.dead_letter(dead[1].id, error="HTTP 400", attempts=1)
        await store.dead_letter(gone[1].id, error="HTTP 400", attempts=1)
        await store.mark_delivered(gone[0].id)
        assert await store.dlq_purge(event_id="evt_gone") == 1  # evt_gone leaves the spool

        ids = [whole[0].id, whole[1].id, half[0].id, dead[0].id, gone[0].id, 10_000]
        await store.mark_delivered_many(ids)

        assert [(e.event_id, e.sinks) for e in await store.history()] == [
            ("evt_whole", ("agent", "audit"))
        ]
        assert store.spool_bytes == 20 + 40  # evt_half and evt_dead still held
        assert read_db(db, "SELECT event_id FROM events ORDER BY seq") == [
            ("evt_half",),
            ("evt_dead",),
        ]
        assert read_db(db, "SELECT seq, sink FROM delivered ORDER BY seq") == [
            (half[0].seq, "agent"),
            (dead[0].seq, "agent"),
        ]
        assert [d.event_id for d in await store.pending("audit")] == ["evt_half"]

        await store.mark_delivered(half[1].id)
        assert [(e.event_id, e.sinks) for e in await store.history(limit=1)] == [
            ("evt_half", ("agent", "audit"))
        ]
        assert store.spool_bytes == 40
    # The statement's view and trigger are the write connection's own: neither reaches the file,
    # whose schema stays the migrations' alone.
    assert read_db(db, "SELECT name FROM sqlite_master WHERE name LIKE 'delivered_batch%'") == []
    assert read_db(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_replay_holds_the_event_again_for_one_sink(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    async with opened(db) as store:
        raw = b'{"event_id": "evt_r"}'
        (a, b) = (await store.accept(event("evt_r", raw=raw), ["agent", "audit"])).deliveries
        await store.mark_delivered_many([a.id, b.id])
        assert await store.replay("evt_nope", "agent") is ReplayOutcome.UNKNOWN

        assert await store.replay("evt_r", "agent") is ReplayOutcome.QUEUED
        (again,) = await store.pending("agent")
        assert (again.event_id, again.payload, again.attempts) == ("evt_r", raw, 0)
        assert again.seq > b.seq  # a new seq: after every event held before it
        assert await store.pending("audit") == []
        assert store.spool_bytes == len(raw)
        # Still held: a second replay to the same sink adds nothing, another sink gets a row.
        assert await store.replay("evt_r", "agent") is ReplayOutcome.ALREADY_HELD
        assert await store.replay("evt_r", "audit") is ReplayOutcome.QUEUED
        (for_audit,) = await store.pending("audit")
        assert for_audit.seq == again.seq

        await store.mark_delivered_many([again.id, for_audit.id])
        assert [(e.event_id, e.sinks) for e in await store.history()] == [
            ("evt_r", ("agent", "audit")),
            ("evt_r", ("agent", "audit")),
        ]
        shown = await store.history_event("evt_r")
        assert shown is not None
        assert shown.seq == again.seq  # the newest delivery
        assert store.spool_bytes == 0


async def test_replay_refuses_an_event_that_does_not_fit(tmp_path: Path) -> None:
    async with opened(tmp_path / "bridge.db", max_bytes=100) as store:
        raw = b'{"event_id": "evt_big", "pad": "%s"}' % (b"x" * 40)
        (row,) = (await store.accept(event("evt_big", raw=raw), ["agent"])).deliveries
        await store.mark_delivered(row.id)
        await store.accept(event("evt_fill", raw=b"y" * 60), ["agent"])
        with pytest.raises(SpoolFullError):
            await store.replay("evt_big", "agent")
        assert [d.event_id for d in await store.pending("agent")] == ["evt_fill"]
        assert store.spool_bytes == 60


def test_state_history_is_a_whole_number_with_a_key_path(tmp_path: Path) -> None:
    def config(**state: object) -> StateConfig:
        data = bridge_config_dict(tmp_path, state={"path": str(tmp_path / "b.db"), **state})
        return build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={}).state

    assert config().history == 1000
    assert config(history=0).history == 0
    assert StoreLimits.from_config(config(history=7)).history == 7
    for bad in (-1, "many", 1.5):
        with pytest.raises(ConfigError) as caught:
            config(history=bad)
        assert any(p.startswith("state.history: ") for p in caught.value.problems), bad


async def test_schema_2_database_migrates_and_delivers_everything(
    tmp_path: Path, receiver: Receiver
) -> None:
    # A schema-2 database holding pending and dead rows: the 0.1.0 fixture taken through the
    # first two migrations only, as the release before the history left it.
    db = tmp_path / "state" / "bridge.db"
    db.parent.mkdir(mode=0o700)
    shutil.copyfile(FIXTURE, db)
    database.open_database(db, recover=False, migrations=MIGRATIONS[:2]).close()
    assert read_db(db, "PRAGMA user_version") == [(2,)]
    assert read_db(db, "SELECT COUNT(*) FROM deliveries WHERE state = 'dead'") == [(2,)]

    config_file, config, audit = upgrade_config(tmp_path, db, receiver.url)
    everything = sorted(PENDING["agent"] + DEAD["agent"])
    with capture_logs() as logs:
        async with running_bridge(config) as sup:
            assert sup.store is not None
            (migrated,) = events_named(logs, "store.migrated")
            assert (migrated["from_version"], migrated["to_version"]) == (2, SCHEMA_VERSION)
            await wait_until(lambda: sorted(receiver.accepted_ids()) == sorted(PENDING["agent"]))
            await wait_until(lambda: len(read_lines(audit)) == len(PENDING["audit"]))
            code, out, err = await run_cli("dlq", "retry", "--json", "-c", str(config_file))
            assert (code, json.loads(out)) == (0, {"retried": 2}), err
            await wait_until(lambda: sorted(receiver.accepted_ids()) == everything)
            store = sup.store
            await wait_until(lambda: store.spool_bytes == 0)
            # Everything the old database held went through the history once delivered; the
            # event delivered before the upgrade was never there.
            held = {e for ids in PENDING.values() for e in ids} | set(DEAD["agent"])
            history = {e.event_id: e.sinks for e in await store.history()}
            assert set(history) == held
            assert DELIVERED not in history
            assert history["evt_v1_both"] == ("agent", "audit")
            # Its audit row was delivered before the upgrade, when no sink was remembered.
            assert history["evt_v1_agent"] == ("agent",)
    assert read_db(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert read_db(db, "SELECT COUNT(*) FROM events") == [(0,)]
