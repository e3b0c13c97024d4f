"""What each write does inside its transaction, on the writer thread: accept (dedup, conflicts and
the quarantine, the room check), the WebSocket cursor rules, and the changes to delivery state
that free spool bytes.

Each works on a :class:`Tx`, which collects what the store keeps in memory; the writer applies it
only once the transaction commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from bridge.errors import SpoolFullError, StoreError
from bridge.events import Event
from bridge.plan import Note, Plan
from bridge.store import queries
from bridge.store.batch import ID_TAKEN, KnownIds, NewEvents
from bridge.store.bounds import Room
from bridge.store.pacing import PRUNE_SQL, Pacing
from bridge.store.rows import (
    DUPLICATE,
    AcceptOutcome,
    AcceptResult,
    ConflictReason,
    Delivery,
    ReplayOutcome,
    notes_json,
)

Clock = Callable[[], float]
"""Wall-clock seconds: when an id was seen, a delivery died, an event was quarantined."""

PRUNE_CHUNK: Final = 1000
"""Seen ids forgotten per transaction, so a prune never holds the write lock for long."""


class Tx:
    """What one write transaction changes in the store's memory; applied only once it commits."""

    __slots__ = (
        "conn",
        "cursor",
        "data_version",
        "history_rows",
        "last_event_at",
        "spool",
        "ws_gap",
    )

    def __init__(self, conn: sqlite3.Connection, state: queries.State, ws_gap: str | None) -> None:
        self.conn = conn
        self.spool, self.cursor, self.data_version, self.history_rows = state
        self.ws_gap = ws_gap  # the first refused WebSocket event id, see advance_cursor
        self.last_event_at: float | None = None


# -- the WebSocket cursor ------------------------------------------------------------------------


def advance_cursor(tx: Tx, event: Event) -> None:
    """Move the cursor to ``event``, stored or recognised, unless a refused one is before it."""
    if not event.from_own_websocket:
        return
    if tx.ws_gap is not None:
        # A WebSocket event before this one was refused (spool full, write failed). The
        # cursor must not pass it, or the replay after reconnecting would skip it; it moves
        # again once that event comes back (replayed) and is stored.
        if tx.ws_gap != event.event_id:
            return
        tx.ws_gap = None
    tx.cursor = event.event_id


def hold_cursor(tx: Tx, ws_event_id: str | None) -> None:
    """``ws_event_id`` (a WebSocket event, if not None) was refused: the cursor stays before it."""
    if ws_event_id is not None and tx.ws_gap is None:
        tx.ws_gap = ws_event_id


def clear_cursor(tx: Tx) -> None:
    tx.cursor = tx.ws_gap = None


# -- accept --------------------------------------------------------------------------------------


def accept_batch(
    tx: Tx,
    *,
    batch: Sequence[tuple[Event, Plan]],
    room: Room,
    clock: Clock,
    history: int = 0,
    debounce: Mapping[str, float] = MappingProxyType({}),
) -> list[AcceptResult | StoreError]:
    """Accept each event; a refused one (:class:`SpoolFullError`) is its result, the rest stand.

    ``debounce``: seconds per debounced sink; ``history``: completed events the history keeps.
    """
    results: list[AcceptResult | StoreError] = []
    known = KnownIds(tx.conn, (event for event, _ in batch))
    new = NewEvents(tx.conn, known.last_ids)
    paced = [(e, p) for e, p in batch if not p.simple] if not debounce else batch
    pacing = Pacing(tx.conn, paced, debounce) if paced else None
    now = clock()
    for event, plan in batch:
        try:
            results.append(
                accept(tx, event, plan, room=room, now=now, known=known, new=new, pacing=pacing)
            )
        except SpoolFullError as exc:  # this event wrote nothing; the rest stand
            if event.from_own_websocket:
                hold_cursor(tx, event.event_id)
            results.append(exc)
    if pacing is not None:
        pacing.flush(now)
    tx.history_rows = new.flush(history=history, at=now, history_rows=tx.history_rows)
    return results


def accept(
    tx: Tx,
    event: Event,
    plan: Plan,
    *,
    room: Room,
    now: float,
    known: KnownIds,
    new: NewEvents,
    pacing: Pacing | None,
) -> AcceptResult:
    """Record ``event`` with one pending delivery per sink its plan gives, unless its key or id
    is known; rate limits and debounce windows decided by ``pacing``.

    ``known`` holds what the store knows of the batch's ids; the rows join ``new``, which the
    caller flushes before the transaction commits.

    Raises:
        SpoolFullError: it does not fit; nothing was written.
    """
    identity = known.identity(event)
    if identity is not None:
        # Handled either way: a conflict moves the cursor like a duplicate.
        advance_cursor(tx, event)
        reason = conflict_reason(identity, event)
        return DUPLICATE if reason is None else _quarantine(tx, event, reason, room, now)
    # Checked before any limit counts a hit: a refused event leaves no trace.
    size = len(event.raw) if plan.sinks or plan.limited else 0
    room.check(tx.spool, size)
    times: tuple[tuple[float | None, float | None], ...] = ()
    noted: tuple[Note, ...] = ()
    if pacing is None:
        sinks = plan.sinks
    else:
        targets, notes = pacing.decide(event, plan, now)
        sinks, noted = tuple(targets.at), tuple(notes)
        times = tuple((t, pacing.window(event, s, now)) for s, t in targets.at.items())
        if not sinks:
            size = 0
    seq, ids = new.add(event, sinks, seen_at=now, times=times, notes=notes_json(noted))
    known.add(event, held=bool(sinks))
    tx.spool += size
    tx.last_event_at = event.received_at
    advance_cursor(tx, event)
    if times:
        deliveries = tuple(
            Delivery.of_accepted(event, id=i, seq=seq, sink=s, not_before=t, window_closes=w)
            for i, s, (t, w) in zip(ids, sinks, times, strict=True)
        )
    else:
        deliveries = tuple(
            Delivery.of_accepted(event, id=row_id, seq=seq, sink=sink)
            for row_id, sink in zip(ids, sinks, strict=True)
        )
    return AcceptResult(outcome=AcceptOutcome.ACCEPTED, seq=seq, deliveries=deliveries, notes=noted)


def conflict_reason(
    known: tuple[int, str | None, str | None], event: Event
) -> ConflictReason | None:
    """Why ``event`` conflicts with what the store knows of its key or id; None: a duplicate."""
    kind, content_id, inbox_id = known
    if kind == ID_TAKEN:
        return ConflictReason.ID_REUSED
    if content_id is None or event.content_id is None:
        return None  # unknown content (a row from before migration 2) never conflicts
    if inbox_id != event.inbox_id:
        return ConflictReason.INBOX
    if content_id != event.content_id:
        return ConflictReason.CONTENT
    return None


def _quarantine(
    tx: Tx, event: Event, reason: ConflictReason, room: Room, now: float
) -> AcceptResult:
    # A conflict is answered like a duplicate whatever room is left: past the spool bound it
    # is kept without its payload rather than refused (a 503 would only bring it back).
    try:
        room.check(tx.spool, len(event.raw), refusal=False)
        keep = True
    except SpoolFullError:
        keep = False
    stored, size = queries.quarantine_event(
        tx.conn,
        event,
        reason.value,
        keep_payload=keep,
        at=now,
        max_rows=room.limits.max_quarantined,
    )
    tx.spool += size
    return AcceptResult(
        outcome=AcceptOutcome.CONFLICT,
        seq=None,
        deliveries=(),
        conflict=reason,
        quarantined=stored,
    )


# -- delivery state and the dedup record ---------------------------------------------------------


def delivered(tx: Tx, *, delivery_ids: Sequence[int], history: int, clock: Clock) -> None:
    """Delete delivered rows; events left without rows move to the newest ``history``."""
    freed, tx.history_rows = queries.delete_delivered(
        tx.conn, delivery_ids, history=history, at=clock(), history_rows=tx.history_rows
    )
    tx.spool -= freed


def new_instance(tx: Tx) -> str:
    return queries.new_instance(tx.conn)


def replay(tx: Tx, *, event_id: str, sink: str, room: Room) -> ReplayOutcome:
    """Queue a new pending row of ``event_id`` for ``sink``, dedup bypassed: to the event
    still held, else to the event held again from its newest history row.

    Raises:
        SpoolFullError: the event does not fit the spool now; nothing was written.
    """
    conn = tx.conn
    held = conn.execute(queries.HELD_SEQ_SQL, (event_id,)).fetchone()
    if held is not None:
        added = conn.execute(queries.ADD_DELIVERY_SQL, (held[0], sink)).rowcount
        return ReplayOutcome.QUEUED if added else ReplayOutcome.ALREADY_HELD
    past = conn.execute(queries.NEWEST_PAST_SQL, (event_id,)).fetchone()
    if past is None:
        return ReplayOutcome.UNKNOWN
    seq, size = past
    room.check(tx.spool, size)
    new_seq = conn.execute(queries.HOLD_AGAIN_SQL, (seq,)).lastrowid
    conn.execute(queries.ADD_DELIVERY_SQL, (new_seq, sink))
    tx.spool += size
    return ReplayOutcome.QUEUED


def drop(select: str, params: Mapping[str, str | None], tx: Tx) -> int:
    """Delete the delivery rows ``select`` matches (``DEAD_ROWS_SQL``, ``SINK_ROWS_SQL``)."""
    count, tx.spool = queries.delete_deliveries(tx.conn, select, params)
    return count


def retry_dead(params: Mapping[str, str | None], tx: Tx) -> int:
    """Move matching dead rows back to pending."""
    return queries.retry_dead(tx.conn, params)


def purge_quarantine(tx: Tx, *, event_id: str | None) -> int:
    count, tx.spool = queries.purge_quarantine(tx.conn, event_id)
    return count


def prune_seen(tx: Tx, *, window: float, clock: Clock) -> int:
    """Forget up to :data:`PRUNE_CHUNK` ids seen more than ``window`` seconds ago, and rate-limit
    keys and debounce windows past their time."""
    now = clock()
    for statement in PRUNE_SQL:
        tx.conn.execute(statement, (now,))
    return queries.prune_seen(tx.conn, before=now - window, limit=PRUNE_CHUNK)
