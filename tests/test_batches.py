"""Batch boundaries: many events in one store transaction, many deliveries in one sink write.

A batch never turns one event's failure into another's: a duplicate, a refusal or a poison
payload in the middle of a batch concerns that event alone, and a write that fails as a whole is
retried event by event.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import make_config, read_lines, wait_until

from bridge.delivery import SinkWorker
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError, SpoolFullError
from bridge.events import Event, Origin, parse_event
from bridge.metrics import Metrics
from bridge.sinks import SINK_TYPES, BatchSink
from bridge.store import AcceptOutcome, Delivery, Store, StoreLimits, batch, database


def event(event_id: str, *, thread: str = "thr_1", pad: int = 0) -> Event:
    body = {"event": "message.received", "event_id": event_id, "inbox_id": "inb_1",
            "thread_id": thread, "pad": "x" * pad}  # fmt: skip
    return parse_event(json.dumps(body).encode(), Origin.WEBSOCKET)


async def test_a_duplicate_and_a_refusal_inside_a_batch_concern_those_events_alone(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "b.db", StoreLimits(max_bytes=4096, min_free=0))
    try:
        first, too_big, after = event("evt_1"), event("evt_big", pad=8000), event("evt_3")
        results = await store.accept_batch(
            [(first, ["s"]), (first, ["s"]), (too_big, ["s"]), (after, ["s"])]
        )
        assert [getattr(r, "outcome", None) for r in results] == [
            AcceptOutcome.ACCEPTED,
            AcceptOutcome.DUPLICATE,
            None,
            AcceptOutcome.ACCEPTED,
        ]
        assert isinstance(results[2], SpoolFullError)
        # The cursor never passes the refused WebSocket event: a reconnect replays from it.
        assert store.cursor == "evt_1"
        assert [d.event_id for d in await store.pending("s")] == ["evt_1", "evt_3"]
    finally:
        await store.close()


@pytest.mark.parametrize("size", [1, 3, 4, 9])
async def test_a_batch_past_one_statement_writes_each_row_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    """A batch's rows go in statements of at most ``ROWS_PER_INSERT`` rows, each padded to a
    power of two: with the bound made 4, batches of 1, 3, 4 and 9 events (one of them a
    duplicate, one routed nowhere) keep every row once, with its own payload."""
    monkeypatch.setattr(batch, "ROWS_PER_INSERT", 4)
    store = await Store.open(tmp_path / "b.db", StoreLimits(min_free=0))
    try:
        events = [event(f"evt_{n}", thread=f"thr_{n}", pad=n * 7) for n in range(size)]
        routed: list[tuple[Event, list[str]]] = [(e, ["a", "b"]) for e in events]
        if size > 3:
            routed[1] = (events[1], [])  # remembered as seen, held for no sink
            routed.append((events[2], ["a", "b"]))  # a duplicate inside the batch
        results = await store.accept_batch(routed)
        outcomes = [getattr(r, "outcome", None) for r in results]
        assert outcomes.count(AcceptOutcome.DUPLICATE) == (1 if size > 3 else 0)
        held = [e for e, sinks in routed[:size] if sinks]
        for sink in ("a", "b"):
            rows = await store.pending(sink)
            assert [(d.event_id, d.payload) for d in rows] == [(e.event_id, e.raw) for e in held]
        assert store.spool_bytes == sum(len(e.raw) for e in held)
        again = await store.accept_batch([(e, ["a"]) for e in events])
        assert {getattr(r, "outcome", None) for r in again} == {AcceptOutcome.DUPLICATE}
    finally:
        await store.close()


def test_a_batch_fits_a_connection_binding_at_most_999_values(tmp_path: Path) -> None:
    """SQLite before 3.32 binds at most 999 values to a statement: 150 events of two sinks,
    written by a connection with that limit, go in statements that fit it, every row once."""
    _, conn = database.open_writer(tmp_path / "old.db", exclusive=False)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
        events = [event(f"evt_{n}", thread=f"thr_{n}", pad=n) for n in range(150)]
        new = batch.NewEvents(conn, (0, 0))
        database.begin(conn)
        for e in events:
            new.add(e, ["a", "b"], seen_at=1.0)
        new.flush()
        conn.execute("COMMIT")
        stored = conn.execute("SELECT event_id, size, payload FROM events ORDER BY seq").fetchall()
        assert stored == [(e.event_id, len(e.raw), e.raw) for e in events]
        assert conn.execute("SELECT COUNT(*) FROM seen").fetchone() == (150,)
        assert conn.execute("SELECT COUNT(DISTINCT id) FROM deliveries").fetchone() == (300,)
    finally:
        conn.close()


def test_a_batch_writes_timed_and_untimed_rows_and_no_padding(tmp_path: Path) -> None:
    """Rows with a rate limit's or window's times and rows without go by statements of their
    own: each row keeps its times or none; the padding of each statement to a power of two
    (five events, six timed rows and six untimed ones: eight rows each) leaves no row behind in
    any table."""
    _, conn = database.open_writer(tmp_path / "t.db", exclusive=False)
    try:
        new = batch.NewEvents(conn, (0, 0))
        database.begin(conn)
        for n in range(5):
            times = [(100.0 + n, None), (None, 200.0 + n), (None, None)] if n % 2 else []
            new.add(event(f"evt_{n}"), ["a", "b", "c"] if n % 2 else ["a", "b"], seen_at=1.0,
                    times=times)  # fmt: skip
        new.flush()
        conn.execute("COMMIT")
        rows = conn.execute(
            "SELECT seq, sink, not_before, window_closes FROM deliveries ORDER BY id"
        ).fetchall()
        times = {"a": (100.0, None), "b": (None, 200.0), "c": (None, None)}
        assert rows == [
            (n + 1, sink, *(None if t is None else t + n for t in times[sink]))
            if n % 2
            else (n + 1, sink, None, None)
            for n in range(5)
            for sink in (("a", "b", "c") if n % 2 else ("a", "b"))
        ]
        assert conn.execute("SELECT COUNT(*) FROM seen").fetchone() == (5,)
        assert conn.execute("SELECT seq FROM events ORDER BY seq").fetchall() == [
            (seq,) for seq in range(1, 6)
        ]
    finally:
        conn.close()


async def test_a_poison_payload_in_a_batch_is_dead_lettered_alone(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    config = make_config(tmp_path, sinks={"file": {"type": "file", "path": str(out)}})
    store = await Store.open(tmp_path / "b.db", StoreLimits(min_free=0))
    try:
        poison = Event(event_id="evt_poison", type="message.received", inbox_id="inb_1",
                       thread_id="thr_1", sender=None, recipient=None,
                       origin=Origin.WEBHOOK, received_at=0.0, raw=b"{not json")  # fmt: skip
        for e in (event("evt_1"), poison, event("evt_2")):
            await store.accept(e, ["file"])
        sink_config = config.sinks["file"]
        worker = SinkWorker(sink_config, SINK_TYPES["file"].factory(sink_config), store, Metrics())
        assert worker._batch > 1
        await worker.start()
        await wait_until(lambda: worker.state.delivered == 2 and worker.state.dead == 1)
        await worker.stop(2)
        assert [line["event_id"] for line in read_lines(out)] == ["evt_1", "evt_2"]
        (dead,) = await store.dlq_list()
        assert dead.delivery.event_id == "evt_poison"
        assert "not JSON" in dead.error
        assert await store.pending("file") == []
    finally:
        await store.close()


class FailingBatches:
    """A batch sink whose batch write always fails: what a full disk does to a file sink."""

    name = "flaky"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.batches = 0

    async def start(self) -> None:
        pass

    async def send(self, delivery: Delivery) -> None:
        self.sent.append(delivery.event_id)

    async def send_batch(
        self, deliveries: Sequence[Delivery]
    ) -> list[PermanentDeliveryError | None]:
        self.batches += 1
        raise RetryableDeliveryError("the batch write failed")

    async def reopen(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_failed_batch_write_is_retried_event_by_event_in_thread_order(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, sinks={"flaky": {"type": "stdout"}})
    store = await Store.open(tmp_path / "b.db", StoreLimits(min_free=0))
    try:
        ids = [f"evt_{n}" for n in range(6)]
        for n, event_id in enumerate(ids):
            await store.accept(event(event_id, thread=f"thr_{n % 2}"), ["flaky"])
        sink = FailingBatches()
        assert isinstance(sink, BatchSink)
        worker = SinkWorker(config.sinks["flaky"], sink, store, Metrics())
        await worker.start()
        await wait_until(lambda: worker.state.delivered == 6)
        await worker.stop(2)
        assert sink.batches >= 1
        assert sorted(sink.sent) == ids
        for thread in ("0", "1"):
            in_thread = [e for e in ids if int(e[-1]) % 2 == int(thread)]
            assert [e for e in sink.sent if e in in_thread] == in_thread
        assert await store.pending("flaky") == []
    finally:
        await store.close()


async def test_a_batch_write_failing_midway_writes_no_line_twice(tmp_path: Path) -> None:
    out = tmp_path / "out"
    blocked = out / "inb_b"
    config = make_config(
        tmp_path,
        sinks={
            "file": {
                "type": "file",
                "path": str(out / "{inbox_id}" / "events.jsonl"),
                "retry": {"initial": "20ms", "max": "50ms"},
            }
        },
    )
    store = await Store.open(tmp_path / "b.db", StoreLimits(min_free=0))
    try:
        out.mkdir()
        blocked.write_text("a file where the directory should be")
        inboxes = ["inb_a", "inb_b", "inb_a", "inb_a"]
        for n, inbox in enumerate(inboxes):
            body = json.dumps(
                {"event": "message.received", "event_id": f"evt_{n}", "inbox_id": inbox,
                 "thread_id": f"thr_{n}"}
            ).encode()  # fmt: skip
            await store.accept(parse_event(body, Origin.WEBHOOK), ["file"])
        sink_config = config.sinks["file"]
        worker = SinkWorker(sink_config, SINK_TYPES["file"].factory(sink_config), store, Metrics())
        assert worker._batch > 1
        await worker.start()  # one batch of four: the second line's file cannot be opened
        await wait_until(
            lambda: worker.state.delivered == 1 and worker.state.last_error is not None
        )
        blocked.unlink()  # the next retry of evt_1 finds its directory; the rest follow it
        await wait_until(lambda: worker.state.delivered == 4)
        await worker.stop(2)
        written = [line["event_id"] for line in read_lines(out / "inb_a" / "events.jsonl")]
        assert written == ["evt_0", "evt_2", "evt_3"]  # each once
        assert [line["event_id"] for line in read_lines(blocked / "events.jsonl")] == ["evt_1"]
        assert await store.pending("file") == []
    finally:
        await store.close()
