"""Tests for bridge.store: real SQLite files under tmp_path, real subprocesses for the lock; the
clock and the sleeps between prune rounds and write probes are injected and stepped by hand."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import sqlite3
import sys
import threading
import tracemalloc
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.errors import (
    SpoolFullError,
    StoreError,
    StoreLockedError,
    StoreUnavailableError,
    StoreVersionError,
)
from bridge.events import Event, Origin, parse_event
from bridge.store import (
    AcceptOutcome,
    AcceptResult,
    ConflictReason,
    SinkCounts,
    Store,
    StoreLimits,
    database,
    schema,
)
from bridge.store.transactions import Tx

ACCEPTED, DUPLICATE, CONFLICT = (
    AcceptOutcome.ACCEPTED,
    AcceptOutcome.DUPLICATE,
    AcceptOutcome.CONFLICT,
)


def event(
    event_id: str,
    origin: Origin = Origin.WEBSOCKET,
    *,
    raw: bytes | None = None,
    thread_id: str | None = "th-1",
    received_at: float = 1_700_000_000.0,
) -> Event:
    return Event(
        event_id=event_id,
        type="message.received",
        inbox_id="inbox-1",
        thread_id=thread_id,
        sender="a@example.com",
        recipient="b@example.com",
        origin=origin,
        received_at=received_at,
        raw=raw if raw is not None else b'{"event_id": "%s"}' % event_id.encode(),
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "bridge.db"


PROBE = 0.5  # the probe interval, by which a test steps the write probe's sleep
PRUNE = 60.0  # the prune interval, likewise


class SteppedSleep:
    """An injected ``sleep``: a sleeper wakes only when the test lets it (keyed by its delay)."""

    def __init__(self) -> None:
        self._wakers: dict[float, asyncio.Future[None]] = {}
        self._arrived = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        waker = asyncio.get_running_loop().create_future()
        self._wakers[delay] = waker
        self._arrived.set()
        await waker

    async def _asleep(self, delay: float) -> asyncio.Future[None]:
        async with asyncio.timeout(10):
            while (waker := self._wakers.get(delay)) is None or waker.done():
                self._arrived.clear()
                await self._arrived.wait()
        return waker

    async def wake(self, delay: float) -> None:
        """Wait until something sleeps ``delay``, then end that sleep."""
        (await self._asleep(delay)).set_result(None)

    async def step(self, delay: float) -> None:
        """One round of a loop sleeping ``delay``: wake it, wait until it sleeps again."""
        await self.wake(delay)
        await self._asleep(delay)


class Clock:
    """An injected wall clock the test moves."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleep() -> SteppedSleep:
    return SteppedSleep()


@pytest.fixture
async def store(db_path: Path, sleep: SteppedSleep) -> AsyncIterator[Store]:
    s = await Store.open(db_path, probe_interval=PROBE, prune_interval=PRUNE, sleep=sleep)
    yield s
    await s.close()


def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """Read the database through a connection of our own, as another process would."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql, params).fetchall()


# Plain functions, for the file set-up the async tests need (blocking is fine on tmp_path).


def make_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def on_writer(store: Store, sql: str) -> list[tuple[object, ...]]:
    """Run a statement on the store's own write connection (pragmas there are per-connection)."""
    conn = store._res.wconn
    return await asyncio.get_running_loop().run_in_executor(
        store._res.writer, lambda: conn.execute(sql).fetchall()
    )


# -- accept, dedup, cursor ---------------------------------------------------------------------


async def test_accept_records_event_outbox_rows_and_cursor(store: Store, db_path: Path) -> None:
    ev = event("ev-1")
    result = await store.accept(ev, ["agent", "archive", "agent"])

    assert result.outcome is ACCEPTED
    assert result.seq is not None
    assert [d.sink for d in result.deliveries] == ["agent", "archive"]  # a repeated sink: one row
    d = result.deliveries[0]
    assert (d.seq, d.event_id, d.type, d.inbox_id, d.thread_id) == (
        result.seq,
        "ev-1",
        "message.received",
        "inbox-1",
        "th-1",
    )
    assert (d.origin, d.received_at, d.payload, d.attempts, d.last_error) == (
        Origin.WEBSOCKET,
        ev.received_at,
        ev.raw,
        0,
        None,
    )
    assert store.cursor == "ev-1"
    assert store.spool_bytes == len(ev.raw)
    assert await store.last_event_at() == ev.received_at
    # Committed before accept returned: another connection sees all of it.
    assert query(db_path, "SELECT event_id, payload FROM events") == [("ev-1", ev.raw)]
    assert query(db_path, "SELECT sink, state FROM deliveries ORDER BY id") == [
        ("agent", "pending"),
        ("archive", "pending"),
    ]
    assert query(db_path, "SELECT value FROM meta WHERE key = 'cursor'") == [("ev-1",)]


async def test_connection_settings(store: Store, db_path: Path) -> None:
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert await on_writer(store, "PRAGMA synchronous") == [(2,)]  # FULL
    # Every commit waits for the disk, a transaction of delivered marks alone included.
    (row,) = (await store.accept(event("ev-1"), ["agent"])).deliveries
    await store.mark_delivered(row.id)
    assert await on_writer(store, "PRAGMA synchronous") == [(2,)]
    assert await on_writer(store, "PRAGMA foreign_keys") == [(1,)]
    # Freed pages are not zeroed into the WAL again (SQLite built with SECURE_DELETE zeroes them).
    assert await on_writer(store, "PRAGMA secure_delete") == [(2,)]  # FAST
    # Statement journals stay in memory, not in files of a temporary directory.
    assert await on_writer(store, "PRAGMA temp_store") == [(2,)]  # MEMORY
    indexes = query(db_path, "SELECT name FROM sqlite_master WHERE type = 'index'")
    assert ("deliveries_by_sink",) in indexes
    assert query(db_path, "PRAGMA index_info(deliveries_by_sink)") == [
        (0, 2, "sink"),
        (1, 3, "state"),
        (2, 1, "seq"),
    ]


async def test_duplicate_is_recognised_and_moves_the_cursor(store: Store) -> None:
    await store.accept(event("ev-1"), ["agent"])
    await store.accept(event("ev-2", Origin.WEBHOOK), ["agent"])
    assert store.cursor == "ev-1"  # webhook events never move the WebSocket cursor

    again = await store.accept(event("ev-2"), ["agent"])  # the WS replays what a webhook brought

    assert (again.outcome, again.seq, again.deliveries) == (DUPLICATE, None, ())
    assert store.cursor == "ev-2"
    assert len(await store.pending("agent")) == 2


async def test_duplicate_within_one_batch(store: Store) -> None:
    commits = store.commits
    first, second = await asyncio.gather(
        store.accept(event("ev-1"), ["agent"]), store.accept(event("ev-1"), ["agent"])
    )
    assert (first.outcome, second.outcome) == (ACCEPTED, DUPLICATE)
    assert store.commits == commits + 1  # one batch
    assert len(await store.pending("agent")) == 1


async def test_event_without_sinks_is_seen_but_holds_no_payload(
    store: Store, db_path: Path
) -> None:
    first = await store.accept(event("ev-1"), [])
    second = await store.accept(event("ev-2"), ["agent"])

    assert first.outcome is ACCEPTED
    assert first.deliveries == ()
    assert first.seq is not None
    assert second.seq is not None
    assert first.seq < second.seq
    assert (await store.accept(event("ev-1"), ["agent"])).outcome is DUPLICATE
    assert store.spool_bytes == len(event("ev-2").raw)
    assert query(db_path, "SELECT event_id FROM events") == [("ev-2",)]
    assert await store.sink_counts() == {"agent": SinkCounts(pending=1, dead=0)}


async def test_accepts_queued_together_are_written_by_one_set_of_statements(store: Store) -> None:
    """Accepts queued while a commit runs share the next transaction and its SQL: one insert of
    events for all of them, each caller still answered for its own events, in order."""
    statements: list[str] = []
    loop, res = asyncio.get_running_loop(), store._res  # the connection lives on its thread
    await loop.run_in_executor(res.writer, res.wconn.set_trace_callback, statements.append)
    commits = store.commits
    first = store.accept_batch([(event("ev-1"), ["agent"]), (event("ev-2"), ["agent"])])
    second = store.accept_batch([(event("ev-2"), ["agent"]), (event("ev-3"), ["agent"])])
    third = store.accept_batch([(event("ev-4"), [])])
    answers = await asyncio.gather(first, second, third)
    await loop.run_in_executor(res.writer, res.wconn.set_trace_callback, None)

    assert store.commits == commits + 1
    assert [[getattr(r, "outcome", r) for r in answer] for answer in answers] == [
        [ACCEPTED, ACCEPTED],
        [DUPLICATE, ACCEPTED],  # ev-2 from the first caller's share is known to the second's
        [ACCEPTED],
    ]
    assert sum(s.lstrip().startswith("INSERT INTO events") for s in statements) == 1
    assert [d.event_id for d in await store.pending("agent")] == ["ev-1", "ev-2", "ev-3"]
    assert store.cursor == "ev-4"


async def test_group_commit_shares_transactions(store: Store) -> None:
    commits = store.commits
    results = await asyncio.gather(*(store.accept(event(f"ev-{i}"), ["agent"]) for i in range(500)))

    assert all(r.outcome is ACCEPTED for r in results)
    assert store.commits - commits <= 5, store.commits - commits  # not one fsync per event
    seqs = [r.seq or 0 for r in results]
    assert seqs == sorted(seqs)  # committed in call order
    assert store.cursor == "ev-499"
    assert len(await store.pending("agent")) == 500


async def test_the_writer_thread_goes_on_to_the_next_batch_without_the_event_loop(
    store: Store,
) -> None:
    """A write queued while a commit runs is committed next by the writer thread itself: while
    the event loop is busy (here: blocked outright), the writer does not wait for it."""
    started, release, second_ran = threading.Event(), threading.Event(), threading.Event()

    def first(tx: object) -> str:
        started.set()
        release.wait()
        return "first"

    def second(tx: object) -> str:
        second_ran.set()
        return "second"

    commits = store.commits
    first_done = store._writer.submit(first)
    await asyncio.to_thread(started.wait)
    second_done = store._writer.submit(second)
    release.set()
    # The event loop does nothing until the second write has run on the writer thread.
    assert second_ran.wait(timeout=30)
    assert await asyncio.gather(first_done, second_done) == ["first", "second"]
    assert store.commits == commits + 2


async def test_a_misused_sqlite_call_fails_its_write_and_the_writer_goes_on(
    store: Store, sleep: SteppedSleep
) -> None:
    """An error of the sqlite3 module itself (no SQLite error name) fails that write like a
    disk error; the probe, the writes after it and closing the store still finish."""
    bad = store._writer.submit(lambda tx: tx.conn.execute("SELECT ?", (1, 2)))
    async with asyncio.timeout(30):
        with pytest.raises(StoreUnavailableError, match="ProgrammingError"):
            await bad
        await sleep.wake(PROBE)
        await store.wait_writable()
        assert (await store.accept(event("ev-after"), ["agent"])).outcome is ACCEPTED
        await store.close()


async def test_a_write_failing_right_after_a_successful_probe_is_probed_again(
    store: Store, sleep: SteppedSleep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's success and the next write's failure can reach the event loop together,
    before the probe's task wakes: the failure must start a probe of its own."""

    def fails(tx: Tx) -> None:
        tx.conn.execute("INSERT INTO no_such_table VALUES (1)")  # OperationalError

    writer = store._writer
    probe_queued = asyncio.Event()
    probe_call = writer._probe_call

    def probe_and_tell() -> asyncio.Future[None]:
        queued = probe_call()
        probe_queued.set()
        return queued

    monkeypatch.setattr(writer, "_probe_call", probe_and_tell)
    with pytest.raises(StoreUnavailableError):
        await writer.submit(fails)
    hold, after = threading.Event(), threading.Event()
    held = writer.call(lambda conn: hold.wait(30))  # the thread waits: the probe queues behind
    await sleep.wake(PROBE)
    async with asyncio.timeout(30):
        await probe_queued.wait()
    assert writer._queue[-1].probe  # queued, behind the held call
    failing = writer.submit(fails)
    marker = writer.call(lambda conn: after.set())
    hold.set()
    # The event loop is blocked until both outcomes have been posted to it.
    assert after.wait(timeout=30)
    await asyncio.gather(held, marker)
    with pytest.raises(StoreUnavailableError):
        await failing
    assert not store.writable
    await sleep.wake(PROBE)  # the probe the failure started
    async with asyncio.timeout(30):
        await store.wait_writable()
    assert (await store.accept(event("ev-1"), ["agent"])).outcome is ACCEPTED


async def test_data_version_is_read_in_turn_with_the_writes(store: Store, db_path: Path) -> None:
    """Another process's commit changes it; this store's own commits do not."""
    before = await store.data_version()
    await store.accept(event("ev-1"), ["agent"])
    assert await store.data_version() == before
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("INSERT INTO meta VALUES ('other', 1)")
    finally:
        other.close()
    assert await store.data_version() != before


async def test_accepts_fired_without_awaiting_commit_in_call_order(store: Store) -> None:
    # The WebSocket source's pattern: several accepts in flight, the cursor must end on the last.
    # The writer thread is held, so the first accepts' batch is still committing (waiting for
    # the thread) when the later ones are queued behind it.
    gate = threading.Event()
    held = asyncio.get_running_loop().run_in_executor(store._res.writer, gate.wait)
    tasks = [asyncio.create_task(store.accept(event(f"ev-{i}"), ["agent"])) for i in range(50)]
    await store.pending("agent")  # a read round trip: the first accepts are queued meanwhile
    tasks += [asyncio.create_task(store.accept(event(f"ev-{i}"), ["agent"])) for i in range(50, 80)]
    gate.set()
    await held
    results = await asyncio.gather(*tasks)

    seqs = [r.seq or 0 for r in results]
    assert seqs == sorted(seqs)
    assert store.cursor == "ev-79"
    pending = await store.pending("agent")
    assert [d.event_id for d in pending] == [f"ev-{i}" for i in range(80)]


async def test_accept_takes_its_queue_place_before_first_suspending(store: Store) -> None:
    # Step the coroutines by hand: the first step must already have queued the write, so the
    # one stepped first commits first whatever order they are awaited in.
    first, second = store.accept(event("ev-a"), ["agent"]), store.accept(event("ev-b"), ["agent"])
    waiting_b = second.send(None)
    waiting_a = first.send(None)
    assert isinstance(waiting_a, asyncio.Future)
    assert isinstance(waiting_b, asyncio.Future)
    await asyncio.wait([waiting_a, waiting_b])

    def result(coro: Coroutine[object, None, AcceptResult]) -> AcceptResult:
        with pytest.raises(StopIteration) as stop:
            coro.send(None)
        value: AcceptResult = stop.value.value
        return value

    a, b = result(first), result(second)
    assert a.seq is not None
    assert b.seq is not None
    assert b.seq < a.seq
    assert store.cursor == "ev-a"


async def test_an_event_relayed_by_another_bridge_never_moves_the_replay_cursor(
    store: Store,
) -> None:
    # An edge received it over its WebSocket; this bridge took it from the stream.
    relayed = dataclasses.replace(event("ev-relayed", Origin.WEBSOCKET), via="nats")
    assert (await store.accept(relayed, ["agent"])).outcome is ACCEPTED
    assert store.cursor is None
    await store.accept(event("ev-own", Origin.WEBSOCKET), ["agent"])
    assert store.cursor == "ev-own"
    await store.accept(dataclasses.replace(event("ev-later", Origin.WEBSOCKET), via="nats"), [])
    assert store.cursor == "ev-own"


async def test_cursor_survives_restarts_and_clears(db_path: Path) -> None:
    first = await Store.open(db_path)
    await first.accept(event("ev-1"), ["agent"])
    await first.close()
    second = await Store.open(db_path)
    restored = second.cursor
    await second.clear_cursor()
    cleared = second.cursor
    await second.close()
    third = await Store.open(db_path)
    reopened = third.cursor
    await third.close()
    assert (restored, cleared, reopened) == ("ev-1", None, None)


# -- content identity and conflicts ------------------------------------------------------------


def payload(event_id: str | None = "evt_1", attempt: int | None = 1, **fields: object) -> bytes:
    """An OpenMail ``message.received`` body as one delivery attempt sends it (None: left out)."""
    data: dict[str, object] = {
        "event": "message.received",
        "event_id": event_id,
        "occurred_at": "2026-02-24T10:05:00.000Z",
        "delivered_at": f"2026-02-24T10:05:{attempt or 0:02d}.012Z",
        "attempt": attempt,
        "inbox_id": "inb_1",
        "thread_id": "thr_1",
        "message": {"id": "msg_1", "from": "a@example.com", "to": "inbox@openmail.sh"},
    }
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


def parsed(raw: bytes, origin: Origin = Origin.WEBHOOK, header: str | None = None) -> Event:
    return parse_event(raw, origin, fallback_event_id=header)


async def test_retries_of_one_event_share_its_identity(store: Store) -> None:
    # No event_id in the body: each attempt brings other attempt/delivered_at and another header.
    first = parsed(payload(None, attempt=1), header="evt_h1")
    retry = parsed(payload(None, attempt=2), header="evt_h2")
    assert first.raw != retry.raw

    assert (await store.accept(first, ["agent"])).outcome is ACCEPTED
    assert (await store.accept(retry, ["agent"])).outcome is DUPLICATE
    assert [d.event_id for d in await store.pending("agent")] == ["evt_h1"]


async def test_replayed_body_with_fresh_event_id_headers_is_accepted_once(
    store: Store, db_path: Path
) -> None:
    raw = payload(None)  # one captured, signed request
    outcomes = [
        (await store.accept(parsed(raw, header=header), ["agent"])).outcome
        for header in ("evt_a", "evt_b", "evt_c", "evt_d")
    ]
    assert outcomes == [ACCEPTED, DUPLICATE, DUPLICATE, DUPLICATE]
    assert [d.event_id for d in await store.pending("agent")] == ["evt_a"]
    event = parsed(raw, header="evt_a")
    assert query(db_path, "SELECT event_id, content_id, inbox_id, sent_id FROM seen") == [
        (f"sha256:{event.content_id}", event.content_id, "inb_1", "evt_a")
    ]


async def test_same_id_other_attempt_and_delivered_at_across_sources_is_a_duplicate(
    store: Store,
) -> None:
    assert (await store.accept(parsed(payload(attempt=1)), ["agent"])).outcome is ACCEPTED
    replayed = parsed(payload(attempt=None, delivered_at=None), Origin.WEBSOCKET)
    assert (await store.accept(replayed, ["agent"])).outcome is DUPLICATE
    assert (await store.accept(parsed(payload(attempt=3)), ["agent"])).outcome is DUPLICATE
    assert store.cursor == "evt_1"
    assert await store.quarantine_list() == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"message": {"id": "msg_2", "from": "mallory@example.com"}}, ConflictReason.CONTENT),
        ({"inbox_id": "inb_other"}, ConflictReason.INBOX),
    ],
)
async def test_known_id_with_other_content_is_quarantined_never_delivered(
    store: Store, db_path: Path, changes: dict[str, object], reason: ConflictReason
) -> None:
    original = parsed(payload())
    await store.accept(original, ["agent"])
    spool = store.spool_bytes
    other = parsed(payload(attempt=2, **changes), Origin.WEBSOCKET, header="evt_1")

    result = await store.accept(other, ["agent", "archive"])

    assert (result.outcome, result.conflict, result.quarantined) == (CONFLICT, reason, True)
    assert (result.seq, result.deliveries) == (None, ())
    assert store.cursor == "evt_1"  # handled: the WebSocket moves on as after a duplicate
    assert [d.event_id for d in await store.pending("agent")] == ["evt_1"]
    assert await store.pending("archive") == []
    assert query(db_path, "SELECT COUNT(*) FROM events") == [(1,)]
    (q,) = await store.quarantine_list()
    assert (q.event_id, q.dedup_key, q.reason, q.origin, q.type) == (
        "evt_1",
        "evt_1",
        reason.value,
        Origin.WEBSOCKET,
        "message.received",
    )
    assert (q.inbox_id, q.content_id, q.payload) == (other.inbox_id, other.content_id, other.raw)
    assert q.received_at == other.received_at
    assert q.quarantined_at > 0
    assert store.spool_bytes == spool + len(other.raw)  # within the spool bound

    # OpenMail retrying the conflicting event adds nothing; the original is still a duplicate.
    again = await store.accept(parsed(payload(attempt=3, **changes)), ["agent"])
    assert (again.outcome, again.quarantined) == (CONFLICT, True)
    assert len(await store.quarantine_list()) == 1
    assert (await store.accept(parsed(payload(attempt=4)), ["agent"])).outcome is DUPLICATE


async def test_an_event_id_taken_under_another_key_is_a_conflict(store: Store) -> None:
    # A body without event_id, sent under an X-Event-Id another event already owns.
    await store.accept(parsed(payload("evt_real")), ["agent"])
    squatter = await store.accept(parsed(payload(None, subject="x"), header="evt_real"), ["agent"])
    assert (squatter.outcome, squatter.conflict) == (CONFLICT, ConflictReason.ID_REUSED)

    # And the other way round, after the first event was delivered and only its seen row is left.
    first = await store.accept(parsed(payload(None), header="evt_hdr"), ["agent"])
    await store.mark_delivered(first.deliveries[0].id)
    claimant = await store.accept(parsed(payload("evt_hdr")), ["agent"])
    assert (claimant.outcome, claimant.conflict) == (CONFLICT, ConflictReason.ID_REUSED)

    assert [d.event_id for d in await store.pending("agent")] == ["evt_real"]
    assert [(q.event_id, q.reason) for q in await store.quarantine_list()] == [
        ("evt_real", "event_id_reused"),
        ("evt_hdr", "event_id_reused"),
    ]
    assert [q.event_id for q in await store.quarantine_list(event_id="evt_hdr")] == ["evt_hdr"]


async def test_an_event_of_unknown_content_never_conflicts(store: Store) -> None:
    # Built without a payload (content_id None): only its id is known, as for pre-upgrade rows.
    await store.accept(event("evt_1", Origin.WEBHOOK), ["agent"])
    assert (await store.accept(parsed(payload(inbox_id="inb_x")), ["agent"])).outcome is DUPLICATE
    await store.accept(parsed(payload("evt_2")), ["agent"])
    assert (await store.accept(event("evt_2"), ["agent"])).outcome is DUPLICATE


async def test_quarantine_is_bounded_and_purged(db_path: Path) -> None:
    first = parsed(payload())
    limits = StoreLimits(max_bytes=2 * len(first.raw) + 100, max_quarantined=2)
    store = await Store.open(db_path, limits)
    try:
        await store.accept(first, ["agent"])
        big = parsed(payload(subject="b" * 200))  # does not fit the room left
        small = parsed(payload(subject="s"))
        results = [await store.accept(e, ["agent"]) for e in (big, small)]
        assert [(r.outcome, r.quarantined) for r in results] == [(CONFLICT, True)] * 2
        big_q, small_q = await store.quarantine_list()
        assert (big_q.content_id, big_q.payload) == (big.content_id, None)  # kept, not its bytes
        assert (small_q.content_id, small_q.payload) == (small.content_id, small.raw)
        assert store.spool_bytes == len(first.raw) + len(small.raw)

        # At the row cap a conflict is still answered as one, but no longer stored.
        third = await store.accept(parsed(payload(subject="3")), ["agent"])
        assert (third.outcome, third.quarantined) == (CONFLICT, False)
        assert len(await store.quarantine_list()) == 2

        assert await store.quarantine_purge(event_id="evt_other") == 0
        assert await store.quarantine_purge() == 2
        assert await store.quarantine_list() == []
        assert store.spool_bytes == len(first.raw)
        assert [d.event_id for d in await store.pending("agent")] == ["evt_1"]
    finally:
        await store.close()


async def test_seen_record_of_a_held_event_keyed_by_content_outlives_the_window(
    db_path: Path,
) -> None:
    store = await Store.open(db_path, StoreLimits(dedup_window=0))
    try:
        held = await store.accept(parsed(payload(None), header="evt_h1"), ["agent"])
        assert await store.prune_seen() == 0  # its event is held: it is its own dedup record
        again = await store.accept(parsed(payload(None, attempt=2), header="evt_h2"), ["agent"])
        assert again.outcome is DUPLICATE
        await store.mark_delivered(held.deliveries[0].id)
        assert await store.prune_seen() == 1
    finally:
        await store.close()


# -- delivery state ------------------------------------------------------------------------------


async def test_mark_delivered_deletes_rows_then_the_event(store: Store, db_path: Path) -> None:
    ev = event("ev-1", raw=b"x" * 1000)
    a, b = (await store.accept(ev, ["a", "b"])).deliveries

    await store.mark_delivered(a.id)
    assert store.spool_bytes == 1000  # b still needs it
    assert [d.id for d in await store.pending("b")] == [b.id]

    await store.mark_delivered(b.id)
    await store.mark_delivered(b.id)  # twice, or for a row dropped meanwhile: nothing happens
    assert store.spool_bytes == 0
    assert query(db_path, "SELECT COUNT(*) FROM events") == [(0,)]
    assert await store.sink_counts() == {}
    assert (await store.accept(ev, ["a"])).outcome is DUPLICATE  # still remembered as seen


async def test_pending_is_pending_only_in_seq_order(store: Store) -> None:
    results = [await store.accept(event(f"ev-{i}"), ["agent", "other"]) for i in range(5)]
    seqs = [r.seq or 0 for r in results]
    await store.dead_letter(results[0].deliveries[0].id, error="gone", attempts=3)

    pending = await store.pending("agent")
    assert [d.seq for d in pending] == seqs[1:]
    assert all(d.sink == "agent" for d in pending)
    window = await store.pending("agent", after_seq=seqs[1], limit=2)
    assert [d.seq for d in window] == seqs[2:4]
    assert len(await store.pending("other")) == 5


async def test_record_attempt(store: Store) -> None:
    (d,) = (await store.accept(event("ev-1"), ["agent"])).deliveries
    await store.record_attempt(d.id, attempts=2, error="timeout after 10 s")
    (p,) = await store.pending("agent")
    assert (p.attempts, p.last_error) == (2, "timeout after 10 s")


async def test_dead_letters_list_retry_purge(store: Store) -> None:
    e1 = await store.accept(event("ev-1"), ["a", "b"])
    e2 = await store.accept(event("ev-2"), ["a"])
    e3 = await store.accept(event("ev-3", raw=b"y" * 500), ["b"])
    await store.dead_letter(e3.deliveries[0].id, error="410 Gone", attempts=1)
    await store.dead_letter(e1.deliveries[0].id, error="400 Bad Request", attempts=5)

    dead = await store.dlq_list()
    assert [(x.delivery.event_id, x.delivery.sink) for x in dead] == [("ev-1", "a"), ("ev-3", "b")]
    assert (dead[0].error, dead[0].delivery.attempts, dead[0].delivery.payload) == (
        "400 Bad Request",
        5,
        event("ev-1").raw,
    )
    assert dead[0].dead_at > 0
    assert [x.delivery.event_id for x in await store.dlq_list(sink="b")] == ["ev-3"]
    assert [x.delivery.sink for x in await store.dlq_list(event_id="ev-1")] == ["a"]
    assert await store.dlq_list(sink="a", event_id="ev-3") == []
    assert await store.sink_counts() == {
        "a": SinkCounts(pending=1, dead=1),
        "b": SinkCounts(pending=1, dead=1),
    }

    # Redriven, ev-1 keeps its seq and so comes before ev-2 again.
    assert await store.dlq_retry(sink="a") == 1
    pending = await store.pending("a")
    assert [d.event_id for d in pending] == ["ev-1", "ev-2"]
    assert (pending[0].seq, pending[0].attempts) == (e1.seq, 0)
    assert pending[1].seq == e2.seq

    # Purge drops dead rows only, and an event left without rows leaves the spool.
    spool = store.spool_bytes
    assert await store.dlq_purge(sink="a") == 0
    assert await store.dlq_purge(event_id="ev-3") == 1
    assert store.spool_bytes == spool - 500
    assert await store.dlq_list() == []
    assert await store.sink_counts() == {
        "a": SinkCounts(pending=2, dead=0),
        "b": SinkCounts(pending=1, dead=0),
    }


async def test_drop_sink_drops_pending_and_dead_rows(store: Store) -> None:
    e1 = await store.accept(event("ev-1"), ["kept", "old"])
    e2 = await store.accept(event("ev-2"), ["old"])
    await store.dead_letter(e2.deliveries[0].id, error="x", attempts=1)
    assert set(await store.sink_counts()) == {"kept", "old"}  # configured or not

    assert await store.drop_sink("old") == 2
    assert await store.sink_counts() == {"kept": SinkCounts(pending=1, dead=0)}
    assert store.spool_bytes == len(event("ev-1").raw)  # ev-2 had no other row: gone
    assert [d.id for d in await store.pending("kept")] == [e1.deliveries[0].id]


async def test_seq_keeps_increasing_across_deletes_and_restarts(db_path: Path) -> None:
    store = await Store.open(db_path)
    first = await store.accept(event("ev-1"), ["agent"])
    await store.mark_delivered(first.deliveries[0].id)
    await store.close()
    store = await Store.open(db_path)
    second = await store.accept(event("ev-2"), ["agent"])
    await store.close()
    assert first.seq is not None
    assert second.seq is not None
    assert second.seq > first.seq
    assert second.deliveries[0].id > first.deliveries[0].id  # a stale id never names a new row


# -- dedup window -------------------------------------------------------------------------------


async def test_seen_ids_are_pruned_after_the_window(db_path: Path, sleep: SteppedSleep) -> None:
    clock = Clock()
    limits = StoreLimits(dedup_window=60)
    store = await Store.open(db_path, limits, prune_interval=PRUNE, clock=clock, sleep=sleep)
    try:
        held = await store.accept(event("held"), ["agent"])
        await store.accept(event("gone"), [])
        await sleep.step(PRUNE)  # a prune round inside the window forgets nothing
        assert query(db_path, "SELECT event_id FROM seen") == [("gone",), ("held",)]

        clock.now += 61
        await sleep.step(PRUNE)
        assert query(db_path, "SELECT event_id FROM seen") == [("held",)]
        assert (await store.accept(event("gone"), [])).outcome is ACCEPTED
        # An event still held is its own dedup record, however old.
        assert (await store.accept(event("held"), ["agent"])).outcome is DUPLICATE
        await store.mark_delivered(held.deliveries[0].id)
        await sleep.step(PRUNE)
        assert (await store.accept(event("held"), ["agent"])).outcome is ACCEPTED
    finally:
        await store.close()


async def test_a_stepped_clock_forgets_no_seen_id(db_path: Path, sleep: SteppedSleep) -> None:
    # Forward eight days for one round, then back: pruning by it would forget every id, and
    # OpenMail's next redelivery of a delivered event would reach the agent again.
    clock = Clock()
    limits = StoreLimits(dedup_window=7 * 86400)
    store = await Store.open(db_path, limits, prune_interval=PRUNE, clock=clock, sleep=sleep)
    try:
        await store.accept(event("delivered"), [])
        clock.now += 8 * 86400
        with capture_logs() as logs:
            await sleep.step(PRUNE)
            clock.now -= 8 * 86400
            await sleep.step(PRUNE)
        assert query(db_path, "SELECT event_id FROM seen") == [("delivered",)]
        assert (await store.accept(event("delivered"), [])).outcome is DUPLICATE
        stepped = [e for e in logs if e["event"] == "store.clock_stepped"]
        assert [e["seconds"] for e in stepped] == [8 * 86400, -8 * 86400]
    finally:
        await store.close()


async def test_prune_seen_deletes_in_chunks(db_path: Path) -> None:
    store = await Store.open(db_path, StoreLimits(dedup_window=0))
    try:
        await asyncio.gather(*(store.accept(event(f"ev-{i}"), []) for i in range(2500)))
        commits = store.commits
        assert await store.prune_seen() == 2500
        assert store.commits - commits >= 3  # 1000 per transaction
        assert query(db_path, "SELECT COUNT(*) FROM seen") == [(0,)]
    finally:
        await store.close()


async def test_seen_ids_cost_no_python_memory(store: Store) -> None:
    # The dedup check is the database's primary key: remembering 10,000 more ids must not grow
    # the heap (a Python set of them would take about a megabyte).
    async def burst(start: int) -> None:
        for chunk in range(start, start + 10_000, 1000):
            batch = (store.accept(event(f"event-{i:08d}"), []) for i in range(chunk, chunk + 1000))
            await asyncio.gather(*batch)

    await burst(0)  # warm caches
    # Only what the bridge's own code allocated: tracing is process-wide, and a thread another
    # test left behind in this worker may allocate meanwhile.
    own = [tracemalloc.Filter(True, "*/bridge/*")]
    tracemalloc.start()
    try:
        await burst(10_000)
        before = tracemalloc.take_snapshot().filter_traces(own)
        await burst(20_000)
        after = tracemalloc.take_snapshot().filter_traces(own)
    finally:
        tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 200_000, growth
    assert (await store.accept(event("event-00000001"), [])).outcome is DUPLICATE


# -- bounds -------------------------------------------------------------------------------------


async def test_spool_bound_refuses_without_writing_and_resumes(db_path: Path) -> None:
    store = await Store.open(db_path, StoreLimits(max_bytes=150))
    try:
        first = await store.accept(event("ev-1", raw=b"a" * 100), ["agent"])
        big = event("ev-2", raw=b"b" * 100)
        with pytest.raises(SpoolFullError, match=r"max_bytes=150"):
            await store.accept(big, ["agent"])
        # 100 < 150, but the 100-byte event does not fit: the store is full for it, and says so.
        assert store.has_room_for(0)
        assert not store.has_room
        waiter = asyncio.create_task(store.wait_room(len(big.raw)))
        # A commit that frees nothing does not let it through.
        await store.record_attempt(first.deliveries[0].id, attempts=1, error="x")
        assert not waiter.done()
        assert not store.has_room

        await store.mark_delivered(first.deliveries[0].id)
        async with asyncio.timeout(2):
            await waiter
        assert store.has_room
        assert (await store.accept(big, ["agent"])).outcome is ACCEPTED  # nothing was recorded
        with pytest.raises(SpoolFullError, match="never fits"):
            await store.wait_room(151)
    finally:
        await store.close()


async def test_an_event_larger_than_the_bound_leaves_the_store_ready(db_path: Path) -> None:
    store = await Store.open(db_path, StoreLimits(max_bytes=150))
    try:
        with pytest.raises(SpoolFullError):
            await store.accept(event("ev-huge", raw=b"h" * 151), ["agent"])
        assert store.has_room  # it never fits: refusing it says nothing of the others
        await store.accept(event("ev-1", raw=b"a" * 100), ["agent"])
        small = await store.accept(event("ev-2", raw=b"b" * 10), ["agent"])
        for name, size in (("ev-3", 60), ("ev-4", 41)):
            with pytest.raises(SpoolFullError):
                await store.accept(event(name, raw=b"c" * size), ["agent"])
        assert not store.has_room  # 110 held, under the bound, but events are refused
        # The smallest refused event decides: once 41 bytes fit again, the store is ready,
        # though the 60-byte one would still be refused.
        await store.mark_delivered(small.deliveries[0].id)
        assert store.has_room
        assert not store.has_room_for(60)
    finally:
        await store.close()


async def test_spool_full_reports_has_room_false(db_path: Path) -> None:
    store = await Store.open(db_path, StoreLimits(max_bytes=100))
    try:
        await store.accept(event("ev-1", raw=b"a" * 100), ["agent"])
        assert not store.has_room
    finally:
        await store.close()


async def test_free_disk_floor(db_path: Path) -> None:
    store = await Store.open(db_path, StoreLimits(min_free=1 << 62))
    try:
        with pytest.raises(SpoolFullError, match=rf"free disk under {db_path.parent}.*min_free="):
            await store.accept(event("ev-1"), ["agent"])
        assert not store.has_room
        assert store.cursor is None
    finally:
        await store.close()
    store = await Store.open(db_path)
    try:
        assert (await store.accept(event("ev-1"), ["agent"])).outcome is ACCEPTED
    finally:
        await store.close()


async def test_refused_websocket_event_holds_the_cursor_until_replayed(db_path: Path) -> None:
    store = await Store.open(db_path, StoreLimits(max_bytes=150))
    try:
        e1, e2, e3 = (
            event("ev-1", raw=b"1" * 60),
            event("ev-2", raw=b"2" * 100),
            event("ev-3", raw=b"3" * 10),
        )
        results = await asyncio.gather(
            store.accept(e1, ["agent"]),
            store.accept(e2, ["agent"]),
            store.accept(e3, ["agent"]),
            return_exceptions=True,
        )
        assert isinstance(results[1], SpoolFullError)
        assert store.cursor == "ev-1"  # ev-3 is stored, but the cursor must not pass ev-2

        await store.mark_delivered((await store.pending("agent"))[0].id)
        # Reconnected from ev-1, the server replays ev-2 and ev-3.
        assert (await store.accept(e2, ["agent"])).outcome is ACCEPTED
        assert store.cursor == "ev-2"
        assert (await store.accept(e3, ["agent"])).outcome is DUPLICATE
        assert store.cursor == "ev-3"
    finally:
        await store.close()


# -- write failures -----------------------------------------------------------------------------


async def test_write_failure_fails_the_batch_and_recovers(
    store: Store, db_path: Path, sleep: SteppedSleep
) -> None:
    await store.accept(event("ev-0"), ["agent"])
    ((pages,),) = await on_writer(store, "PRAGMA page_count")
    await on_writer(store, f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLITE_FULL

    with capture_logs() as logs:
        results = await asyncio.gather(
            *(store.accept(event(f"ev-{i}", raw=b"z" * 50_000), ["agent"]) for i in range(1, 4)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailableError) for r in results), results
        assert str(db_path) in str(results[0])
        assert "SQLITE_FULL" in str(results[0])
        assert not store.writable
        for _ in range(2):  # probes run, and fail: the file still cannot grow
            await sleep.step(PROBE)
        assert not store.writable
        with pytest.raises(StoreUnavailableError, match="not writable"):
            await store.accept(event("ev-9"), ["agent"])

        await on_writer(store, "PRAGMA max_page_count = 1073741823")
        await sleep.wake(PROBE)
        async with asyncio.timeout(2):
            await store.wait_writable()
    assert [e["event"] for e in logs if e["event"].startswith("store.w")] == [
        "store.write_failed",
        "store.writable_again",
    ]

    # Nothing of the failed batch was stored, so nothing is a duplicate now.
    for i in range(1, 4):
        assert (await store.accept(event(f"ev-{i}"), ["agent"])).outcome is ACCEPTED
    assert store.cursor == "ev-3"
    assert [d.event_id for d in await store.pending("agent")] == ["ev-0", "ev-1", "ev-2", "ev-3"]


# -- schema versions ----------------------------------------------------------------------------


async def test_empty_file_migrates_to_current_version(db_path: Path) -> None:
    make_file(db_path, b"")
    store = await Store.open(db_path)
    await store.accept(event("ev-1"), ["agent"])
    await store.close()
    assert query(db_path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]


async def test_newer_database_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    for _ in range(2):  # twice: the first attempt released the lock
        with pytest.raises(StoreVersionError) as caught:
            await Store.open(db_path)
        assert "version 99" in str(caught.value)
        assert f"version {schema.SCHEMA_VERSION})" in str(caught.value)
    assert query(db_path, "PRAGMA user_version") == [(99,)]
    assert names(db_path.parent) == ["bridge.db", "bridge.db.lock"]


async def test_migrations_apply_forward_in_one_transaction(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.accept(event("ev-1"), ["agent"])
    await store.close()
    current = tuple(schema.MIGRATIONS)
    broken = (*current, ("ALTER TABLE deliveries ADD COLUMN note TEXT", "NOT SQL AT ALL"))
    good = (*current, ("ALTER TABLE deliveries ADD COLUMN note TEXT",))

    with contextlib.closing(database.connect(db_path)) as conn:
        with pytest.raises(sqlite3.OperationalError):
            database.migrate(conn, db_path, broken)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(current),)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(deliveries)")]
        assert "note" not in columns  # the half-applied migration was rolled back

        assert database.migrate(conn, db_path, good) == len(current)
        assert conn.execute("PRAGMA user_version").fetchone() == (len(current) + 1,)
        rows = conn.execute("SELECT sink, state, note FROM deliveries").fetchall()
        assert rows == [("agent", "pending", None)]  # pending rows kept


# -- one process per state ----------------------------------------------------------------------


async def wait_for_line(stream: asyncio.StreamReader, line: bytes) -> None:
    """Read a child's stdout up to ``line`` (its structlog output shares the stream)."""
    async with asyncio.timeout(10):
        while (got := await stream.readline()) != line:
            assert got, f"child exited before printing {line!r}"


HOLDER = """
import asyncio, sys
from pathlib import Path
from bridge.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await store.close()

asyncio.run(main())
"""


TEMP_DIR_CHILD = """
import asyncio, sys
from pathlib import Path
from bridge.errors import StoreUnavailableError
from bridge.events import Event, Origin
from bridge.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]))
    ids = []
    for n in range(400):
        event = Event(event_id=f"ev-{n}", type="message.received", inbox_id="inbox-1",
                      thread_id=None, sender=None, recipient=None, origin=Origin.WEBHOOK,
                      received_at=1.0, raw=b"x" * 3000)
        ids += [d.id for d in (await store.accept(event, ["agent"])).deliveries]
    try:
        await store.mark_delivered_many(ids[:256])
        print("marked", flush=True)
        for row_id in ids[256:]:
            await store.dead_letter(row_id, error="HTTP 400", attempts=1)
        print("retried", await store.dlq_retry(), flush=True)
        for row_id in ids[256:]:
            await store.dead_letter(row_id, error="HTTP 400", attempts=1)
        print("purged", await store.dlq_purge(), flush=True)
    except StoreUnavailableError as exc:
        print("refused:", exc, flush=True)
    await store.close()

asyncio.run(main())
"""


async def test_large_writes_need_no_temporary_directory(db_path: Path) -> None:
    """The write connection keeps its statement journals in memory: with no temporary directory
    SQLite can write to, a batch of 256 delivered marks (each past 64 KiB of journal, which SQLite
    would move to a file there) and a `dlq retry` and `dlq purge` of every other row go through."""
    env = {**os.environ, "SQLITE_TMPDIR": "/proc"}  # exists, but takes no new file
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", TEMP_DIR_CHILD, str(db_path), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    said = ("refused", "marked", "retried", "purged")
    lines = [line for line in out.decode().splitlines() if line.startswith(said)]
    assert lines == ["marked", "retried 144", "purged 144"]
    assert query(db_path, "SELECT COUNT(*) FROM deliveries") == [(0,)]
    assert query(db_path, "SELECT COUNT(*) FROM history") == [(256,)]


async def test_state_held_by_another_process_is_refused(db_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLDER,
        str(db_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        await wait_for_line(proc.stdout, b"ready\n")
        message = f"state {db_path} is in use by another openmail-bridge (pid {proc.pid})"
        with pytest.raises(StoreLockedError, match=re.escape(message)):
            await Store.open(db_path)
    finally:
        proc.stdin.close()
        async with asyncio.timeout(10):
            await proc.wait()
    assert proc.returncode == 0
    store = await Store.open(db_path)  # released when the holder closed
    await store.close()


async def test_second_open_in_process_is_refused_but_readers_may_share(
    store: Store, db_path: Path
) -> None:
    with pytest.raises(StoreLockedError, match=rf"\(pid {os.getpid()}\)"):
        await Store.open(db_path)

    (d,) = (await store.accept(event("ev-1"), ["agent"])).deliveries
    await store.dead_letter(d.id, error="boom", attempts=3)
    cli = await Store.open(db_path, exclusive=False)
    try:
        assert [x.delivery.event_id for x in await cli.dlq_list()] == ["ev-1"]
        before = await store.data_version()
        assert await cli.dlq_retry() == 1
        assert await store.data_version() != before  # the daemon can notice the CLI's commit
        assert [p.event_id for p in await store.pending("agent")] == ["ev-1"]

        assert await cli.drop_sink("agent") == 1
        await store.accept(event("ev-2", Origin.WEBHOOK), [])
        assert store.spool_bytes == 0  # reloaded after the other connection's commit
    finally:
        await cli.close()


async def test_accepted_event_survives_sigkill(db_path: Path) -> None:
    script = """
import asyncio, sys
from pathlib import Path
from bridge.events import Event, Origin
from bridge.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]))
    ev = Event(event_id="ev-k", type="t", inbox_id=None, thread_id=None, sender=None,
               recipient=None, origin=Origin.WEBSOCKET, received_at=1.0, raw=b"{}")
    await store.accept(ev, ["agent"])
    print("accepted", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(db_path), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        await wait_for_line(proc.stdout, b"accepted\n")
    finally:
        proc.kill()
        await proc.wait()
    store = await Store.open(db_path)
    try:
        assert [d.event_id for d in await store.pending("agent")] == ["ev-k"]
        assert store.cursor == "ev-k"
    finally:
        await store.close()


# -- opening: corruption, unusable paths --------------------------------------------------------


async def test_garbage_file_is_moved_aside(db_path: Path) -> None:
    # SQLite's header, then garbage: a database damaged past reading. (A file without the header
    # is no database at all, a wrong path, and is left where it is: test_state_path.py.)
    garbage = b"SQLite format 3\x00" + b"this is not a database" * 400
    make_file(db_path, garbage)
    with capture_logs() as logs:
        store = await Store.open(db_path)
    try:
        (aside_name,) = [name for name in names(db_path.parent) if ".corrupt-" in name]
        assert re.fullmatch(r"bridge\.db\.corrupt-\d{8}T\d{6}Z", aside_name)
        aside = db_path.with_name(aside_name)
        assert read_file(aside) == garbage
        (entry,) = [e for e in logs if e["event"] == "store.corrupt_moved_aside"]
        assert (entry["log_level"], entry["path"], entry["moved_to"]) == (
            "error",
            str(db_path),
            str(aside),
        )
        assert (await store.accept(event("ev-1"), ["agent"])).outcome is ACCEPTED
    finally:
        await store.close()


async def test_damaged_page_is_moved_aside(db_path: Path) -> None:
    store = await Store.open(db_path)
    await asyncio.gather(
        *(store.accept(event(f"ev-{i}", raw=os.urandom(2000)), ["agent"]) for i in range(50))
    )
    await store.close()
    overwrite(db_path, 2 * 4096, b"\xa5" * 8192)  # header intact, b-tree pages garbage

    store = await Store.open(db_path)
    try:
        assert len([name for name in names(db_path.parent) if ".corrupt-" in name]) == 1
        assert await store.pending("agent") == []
    finally:
        await store.close()


async def test_corrupt_database_is_not_moved_by_a_non_exclusive_open(db_path: Path) -> None:
    make_file(db_path, b"garbage" * 1000)
    with pytest.raises(StoreError, match="corrupt"):
        await Store.open(db_path, exclusive=False)
    assert names(db_path.parent) == ["bridge.db"]


async def test_unusable_path_is_an_error_and_nothing_moves(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    make_file(blocker, b"a regular file")
    with pytest.raises(StoreError, match=rf"cannot open state database {blocker}/bridge\.db"):
        await Store.open(blocker / "bridge.db")
    assert read_file(blocker) == b"a regular file"
    assert names(tmp_path) == ["blocker"]


async def test_directory_in_place_of_database_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    path.mkdir()
    with pytest.raises(StoreError, match="cannot open state database") as caught:
        await Store.open(path)
    assert type(caught.value) is StoreError
    assert path.is_dir()
    assert names(tmp_path) == ["bridge.db", "bridge.db.lock"]


async def test_missing_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "a" / "state" / "bridge.db"
    store = await Store.open(path)
    await store.close()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.exists()


@pytest.mark.parametrize("umask", [0o000, 0o277])
async def test_database_and_its_wal_are_created_private(db_path: Path, umask: int) -> None:
    # Whatever the umask: 0o000 would leave the files world-readable, 0o277 unwritable.
    previous = os.umask(umask)
    try:
        store = await Store.open(db_path)
        try:
            await store.accept(event("ev-1"), ["agent"])
            modes = {
                name: mode(db_path.with_name(name))
                for name in ("bridge.db", "bridge.db-wal", "bridge.db-shm")
            }
        finally:
            await store.close()
    finally:
        os.umask(previous)
    assert modes == {"bridge.db": 0o600, "bridge.db-wal": 0o600, "bridge.db-shm": 0o600}


async def test_an_existing_database_keeps_its_mode(db_path: Path) -> None:
    make_file(db_path, b"")
    os.chmod(db_path, 0o640)
    store = await Store.open(db_path)
    await store.close()
    assert mode(db_path) == 0o640


async def test_closed_store_refuses_work(db_path: Path) -> None:
    store = await Store.open(db_path)
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.accept(event("ev-1"), ["agent"])
    with pytest.raises(StoreError, match="closed"):
        await store.pending("agent")
    with pytest.raises(StoreError, match="closed"):
        await store.data_version()


async def test_a_lock_file_that_cannot_be_written_is_named_in_the_error(tmp_path: Path) -> None:
    # /dev/full refuses every write, as a full disk does the lock file's first one.
    (tmp_path / "bridge.db.lock").symlink_to("/dev/full")
    with pytest.raises(StoreError, match=r"cannot write lock file .*bridge\.db\.lock"):
        await Store.open(tmp_path / "bridge.db")


async def test_a_payload_read_back_from_the_store_is_not_taken_as_compact(store: Store) -> None:
    # Compactness is known from the parse on the way in; a row read back (after a restart, a
    # retry) has no such proof, and its line sink checks the payload again.
    ev = dataclasses.replace(event("ev-1", raw=b'{"event_id":"ev-1"}'), compact=True)
    result = await store.accept(ev, ["agent"])
    assert [d.compact for d in result.deliveries] == [True]
    assert [d.compact for d in await store.pending("agent")] == [False]
