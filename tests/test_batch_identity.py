"""A batch accepts events exactly as one accept after another would.

The store accepts a batch with a fixed number of SQL calls: what it knows of the batch's keys and
ids is read once and kept current in memory, and the new rows are written together at the end.
So a later event of a batch must see the earlier ones as it would see them committed: a
duplicate, a conflict, an id taken as another event's fallback id. The property test runs any
sequence of events from a small, collision-prone pool both ways, into two fresh stores, and
compares each answer and the state left behind; the example tests pin the edges by name, with
seq numbers and payload bytes checked exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from bridge.errors import StoreError
from bridge.events import Event, Origin, content_identity, parse_event
from bridge.store import AcceptOutcome, AcceptResult, ConflictReason, Store, StoreLimits

ACCEPTED, DUPLICATE, CONFLICT = (
    AcceptOutcome.ACCEPTED,
    AcceptOutcome.DUPLICATE,
    AcceptOutcome.CONFLICT,
)
NOW = 1_700_000_000.0
LIMITS = StoreLimits(min_free=0)
SINKS = ("a", "b")
Batch = Sequence[tuple[Event, Sequence[str]]]


def body(
    event_id: str | None, *, subject: str = "s0", inbox: str = "inb_1", attempt: int = 1
) -> dict[str, object]:
    """An OpenMail ``message.received`` payload as one delivery attempt sends it."""
    data: dict[str, object] = {
        "event": "message.received",
        "event_id": event_id,
        "attempt": attempt,  # per delivery: not part of the content identity
        "inbox_id": inbox,
        "thread_id": "thr_1",
        "message": {"id": "msg_1", "from": "a@example.com", "subject": subject},
    }
    return {k: v for k, v in data.items() if v is not None}


def content_key(data: dict[str, object]) -> str:
    """The dedup key of a payload without ``event_id``."""
    return f"sha256:{content_identity(data)}"


# Two keys of body-less payloads, used as other events' ids: a fallback id, or a body event_id,
# that collides with a content key.
KEY_S0 = content_key(body(None))
KEY_S1 = content_key(body(None, subject="s1"))


@dataclasses.dataclass(frozen=True)
class Spec:
    """One event of the pool. ``header``: the fallback id (X-Event-Id), used when the body has no
    ``event_id``; ``bare``: built without a payload to read, so its content is unknown."""

    body_id: str | None
    header: str
    subject: str
    inbox: str
    attempt: int
    origin: Origin
    sinks: tuple[str, ...]
    bare: bool = False

    def event(self, received_at: float) -> Event:
        data = body(self.body_id, subject=self.subject, inbox=self.inbox, attempt=self.attempt)
        raw = json.dumps(data).encode()
        if self.bare:
            return Event(
                event_id=self.body_id or self.header, type="message.received",
                inbox_id=self.inbox, thread_id="thr_1", sender=None, recipient=None,
                origin=self.origin, received_at=received_at, raw=raw,
            )  # fmt: skip
        return parse_event(raw, self.origin, fallback_event_id=self.header, received_at=received_at)


specs = st.builds(
    Spec,
    body_id=st.sampled_from((None, "evt_a", "evt_b", KEY_S0)),
    header=st.sampled_from(("evt_a", "evt_b", "hdr_1", "hdr_2", KEY_S0, KEY_S1)),
    subject=st.sampled_from(("s0", "s1")),
    inbox=st.sampled_from(("inb_1", "inb_2")),
    attempt=st.sampled_from((1, 2)),
    origin=st.sampled_from(tuple(Origin)),
    sinks=st.sampled_from(((), ("a",), ("b",), ("a", "b"))),
    bare=st.sampled_from((False,) * 5 + (True,)),
)


def answer(result: AcceptResult | StoreError) -> tuple[object, ...]:
    """What an accept told its caller, as comparable values."""
    if isinstance(result, StoreError):
        return (type(result).__name__, str(result))
    rows = tuple((d.id, d.seq, d.sink, d.event_id, d.payload) for d in result.deliveries)
    return (result.outcome, result.conflict, result.quarantined, result.seq, rows)


async def held(store: Store) -> dict[str, object]:
    """What the store holds, through its public reads."""
    pending = {
        sink: [(d.event_id, d.seq, d.id, d.payload) for d in await store.pending(sink)]
        for sink in SINKS
    }
    quarantine = [dataclasses.astuple(q) for q in await store.quarantine_list()]
    return {
        "pending": pending,
        "quarantine": quarantine,
        "cursor": store.cursor,
        "spool": store.spool_bytes,
    }


def tables(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, read from the closed database through a connection of our own;
    but the database's token (a random value naming each database, alike in none)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = {}
        for name in names:
            select = f'SELECT * FROM "{name}"'  # noqa: S608 - a name read from sqlite_master
            found = conn.execute(select).fetchall()
            if name == "meta":
                found = [row for row in found if row[0] != "instance"]
            rows[name] = sorted(found, key=repr)
        return rows


async def run_both(directory: Path, batch: Batch) -> None:
    """Accept ``batch`` whole into one store and event by event into another; compare."""
    together = await Store.open(directory / "together.db", LIMITS, clock=lambda: NOW)
    alone = await Store.open(directory / "alone.db", LIMITS, clock=lambda: NOW)
    try:
        batched = await together.accept_batch(batch)
        singly = [(await alone.accept_batch([item]))[0] for item in batch]
        for n, (b, s) in enumerate(zip(batched, singly, strict=True)):
            assert answer(b) == answer(s), f"event {n} of the batch"
            if isinstance(b, AcceptResult):
                event(f"{b.outcome.value} {b.conflict.value if b.conflict else ''}".strip())
        state = await held(together)
        assert state == await held(alone)
    finally:
        await together.close()
        await alone.close()
    assert tables(directory / "together.db") == tables(directory / "alone.db")

    # Not only alike: each routed, accepted event is pending for each of its sinks.
    pending = state["pending"]
    assert isinstance(pending, dict)
    for (item, sinks), result in zip(batch, batched, strict=True):
        assert isinstance(result, AcceptResult)
        if result.outcome is ACCEPTED:
            for sink in sinks:
                assert (item.event_id, result.seq) in [row[:2] for row in pending[sink]]
        else:
            assert (result.seq, result.deliveries) == (None, ())


@settings(max_examples=120, deadline=None)
@given(st.lists(specs, min_size=1, max_size=8))
@example(  # a fallback id another event of the batch then sends as its own event_id
    [
        Spec(None, "evt_a", "s0", "inb_1", 1, Origin.WEBHOOK, ("a",)),
        Spec("evt_a", "hdr_1", "s0", "inb_1", 1, Origin.WEBSOCKET, ("a",)),
    ]
)
@example(  # a fallback id that is another event's content key, both ways round
    [
        Spec(None, "hdr_1", "s0", "inb_1", 1, Origin.WEBHOOK, ("a",)),
        Spec(None, KEY_S0, "s1", "inb_1", 1, Origin.WEBHOOK, ("b",)),
        Spec(None, KEY_S1, "s0", "inb_1", 2, Origin.WEBHOOK, ("a",)),
    ]
)
@example(  # an unrouted event, then the same id with other content and for another inbox
    [
        Spec("evt_a", "hdr_1", "s0", "inb_1", 1, Origin.WEBSOCKET, ()),
        Spec("evt_a", "hdr_1", "s0", "inb_1", 2, Origin.WEBHOOK, ("a",)),
        Spec("evt_a", "hdr_1", "s1", "inb_1", 1, Origin.WEBSOCKET, ("a",)),
        Spec("evt_a", "hdr_1", "s0", "inb_2", 1, Origin.WEBHOOK, ("b",)),
        Spec("evt_a", "hdr_1", "s1", "inb_1", 2, Origin.WEBSOCKET, ("a",)),
    ]
)
def test_a_batch_accepts_as_one_accept_after_another(pool: list[Spec]) -> None:
    batch = [(spec.event(NOW + n), spec.sinks) for n, spec in enumerate(pool)]
    # A fresh directory per example: function-scoped fixtures are not reset between examples.
    with tempfile.TemporaryDirectory(prefix="batch-identity-") as directory:
        asyncio.run(run_both(Path(directory), batch))


# -- the edges, by name -------------------------------------------------------------------------


def webhook(data: dict[str, object], header: str | None = None) -> Event:
    return parse_event(json.dumps(data).encode(), Origin.WEBHOOK, fallback_event_id=header)


def websocket(data: dict[str, object]) -> Event:
    return parse_event(json.dumps(data).encode(), Origin.WEBSOCKET)


def outcomes(results: Sequence[AcceptResult | StoreError]) -> list[tuple[object, ...]]:
    return [
        (r.outcome, r.conflict, r.quarantined) if isinstance(r, AcceptResult) else (r,)
        for r in results
    ]


def accepted_seq(result: AcceptResult | StoreError) -> int:
    assert isinstance(result, AcceptResult)
    assert result.outcome is ACCEPTED
    assert result.seq is not None
    return result.seq


async def test_an_id_used_as_a_fallback_id_earlier_in_the_batch_is_a_conflict(
    tmp_path: Path,
) -> None:
    store = await Store.open(tmp_path / "s.db", LIMITS)
    try:
        squatter = webhook(body(None), header="evt_x")  # keyed by content, sent as evt_x
        claimant = websocket(body("evt_x", subject="other"))
        # ...and the other way round: a fallback id taken by an earlier event's own event_id.
        owner = websocket(body("evt_y"))
        borrower = webhook(body(None, subject="s1"), header="evt_y")
        results = await store.accept_batch(
            [(squatter, ["a"]), (claimant, ["a"]), (owner, ["a"]), (borrower, ["a"])]
        )
        reused = (CONFLICT, ConflictReason.ID_REUSED, True)
        assert outcomes(results) == [
            (ACCEPTED, None, False),
            reused,
            (ACCEPTED, None, False),
            reused,
        ]
        assert [d.event_id for d in await store.pending("a")] == ["evt_x", "evt_y"]
        assert [(q.event_id, q.dedup_key, q.payload) for q in await store.quarantine_list()] == [
            ("evt_x", "evt_x", claimant.raw),
            ("evt_y", borrower.dedup_key, borrower.raw),
        ]
        assert store.cursor == "evt_y"  # a conflict moves the cursor like a duplicate
    finally:
        await store.close()


async def test_a_duplicate_of_an_event_accepted_earlier_in_the_batch(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", LIMITS)
    try:
        first = webhook(body("evt_1"))
        retry = websocket(body("evt_1", attempt=2))  # other bytes, same content identity
        by_content = webhook(body(None, subject="s1"), header="hdr_1")
        replayed = webhook(body(None, subject="s1", attempt=2), header="hdr_2")
        results = await store.accept_batch(
            [(first, ["a"]), (retry, ["a", "b"]), (by_content, ["b"]), (replayed, ["b"])]
        )
        assert [r.outcome for r in results if isinstance(r, AcceptResult)] == [
            ACCEPTED,
            DUPLICATE,
            ACCEPTED,
            DUPLICATE,
        ]
        assert [(d.event_id, d.payload) for d in await store.pending("a")] == [("evt_1", first.raw)]
        assert [(d.event_id, d.payload) for d in await store.pending("b")] == [
            ("hdr_1", by_content.raw)
        ]
        assert store.spool_bytes == len(first.raw) + len(by_content.raw)
        assert await store.quarantine_list() == []
    finally:
        await store.close()


async def test_an_unrouted_event_then_its_duplicate_in_one_batch(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = await Store.open(path, LIMITS)
    try:
        unrouted = websocket(body("evt_1"))
        again = webhook(body("evt_1", attempt=2))
        first, second = await store.accept_batch([(unrouted, []), (again, ["a"])])
        assert isinstance(first, AcceptResult)
        assert (first.outcome, first.deliveries) == (ACCEPTED, ())
        assert first.seq is not None
        assert second == AcceptResult(outcome=DUPLICATE, seq=None, deliveries=())
        assert await store.pending("a") == []
        assert store.spool_bytes == 0
        assert store.cursor == "evt_1"
        (later,) = await store.accept_batch([(again, ["a"])])  # remembered once committed too
        assert isinstance(later, AcceptResult)
        assert later.outcome is DUPLICATE
    finally:
        await store.close()
    assert tables(path)["events"] == []
    assert tables(path)["deliveries"] == []
    assert [row[0] for row in tables(path)["seen"]] == ["evt_1"]


async def test_seq_and_delivery_ids_only_increase_across_batches_and_restarts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    seqs: list[int] = []
    delivery_ids: list[int] = []
    n = 0

    async def batch(store: Store, routes: Sequence[Sequence[str]]) -> None:
        """One batch of new events, routed as ``routes`` says; each must be accepted."""
        nonlocal n
        events = []
        for sinks in routes:
            n += 1
            events.append((websocket(body(f"evt_{n}")), sinks))
        for result in await store.accept_batch(events):
            seqs.append(accepted_seq(result))
            assert isinstance(result, AcceptResult)
            delivery_ids.extend(d.id for d in result.deliveries)

    async def deliver_all(store: Store) -> None:
        rows = [d.id for sink in SINKS for d in await store.pending(sink)]
        await store.mark_delivered_many(rows)

    store = await Store.open(path, LIMITS)
    try:
        await batch(store, [["a", "b"], []])  # the batch's last event has no sinks
        await batch(store, [["a"], []])  # the next batch, same process
        await deliver_all(store)  # no event row is left to show the largest seq
    finally:
        await store.close()
    for _ in range(2):
        store = await Store.open(path, LIMITS)
        try:
            await batch(store, [[], ["b"], []])
            await deliver_all(store)
        finally:
            await store.close()
    store = await Store.open(path, LIMITS)
    try:
        await batch(store, [["a"]])
    finally:
        await store.close()

    assert len(seqs) == 11
    assert seqs == sorted(set(seqs))  # strictly increasing: none reused
    assert len(delivery_ids) == 6
    assert delivery_ids == sorted(set(delivery_ids))


async def test_payload_bytes_are_stored_exactly(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    def opaque(event_id: str, raw: bytes) -> Event:
        """An event whose payload is not read here: any bytes the store is handed."""
        return Event(
            event_id=event_id, type="message.received", inbox_id=None, thread_id=None,
            sender=None, recipient=None, origin=Origin.WEBHOOK, received_at=NOW, raw=raw,
        )  # fmt: skip

    text = "Grüße, 漢字, emoji 🎉, RTL \u202eabc, NBSP\u00a0."
    non_ascii = json.dumps(body("evt_utf8", subject=text), ensure_ascii=False).encode()
    escaped = json.dumps(body("evt_esc", subject='\u0000\u0001\u00ff\ufffd\\"')).encode()
    assert b"\\u0000" in escaped
    events = [
        (websocket(body("evt_unrouted", subject="x" * 300)), []),
        (websocket(body("evt_ascii")), ["a"]),
        (opaque("evt_empty", b""), ["a"]),
        (parse_event(non_ascii, Origin.WEBSOCKET), ["a", "b"]),
        (opaque("evt_binary", bytes(range(256)) + b"\x00\xff\xfe"), ["b"]),
        (opaque("evt_unrouted_2", "ü".encode() * 50), []),
        (parse_event(escaped, Origin.WEBHOOK), ["a"]),
        (opaque("evt_nul", b"\x00"), ["b"]),
    ]
    conflicting = parse_event(
        json.dumps(body("evt_utf8", subject=text + "!"), ensure_ascii=False).encode(),
        Origin.WEBHOOK,
    )
    store = await Store.open(path, LIMITS)
    try:
        results = await store.accept_batch([*events, (conflicting, ["a"])])
        assert [r.outcome for r in results if isinstance(r, AcceptResult)] == [ACCEPTED] * 8 + [
            CONFLICT
        ]
        expected = {
            sink: [(e.event_id, e.raw) for e, sinks in events if sink in sinks] for sink in SINKS
        }
        for sink in SINKS:
            assert [(d.event_id, d.payload) for d in await store.pending(sink)] == expected[sink]
        for (sent, _), result in zip(events, results[:-1], strict=True):
            assert isinstance(result, AcceptResult)
            assert all(d.payload == sent.raw for d in result.deliveries)
        (q,) = await store.quarantine_list()
        assert q.payload == conflicting.raw
        routed_bytes = sum(len(e.raw) for e, sinks in events if sinks)
        assert store.spool_bytes == routed_bytes + len(conflicting.raw)
    finally:
        await store.close()
    # As read from the file: bytes (never text), exact, and size their length.
    rows = tables(path)["events"]
    stored = {row[1]: (row[7], row[8]) for row in rows}  # event_id: (size, payload)
    assert stored == {e.event_id: (len(e.raw), e.raw) for e, sinks in events if sinks}
    assert all(type(payload) is bytes for _, payload in stored.values())
