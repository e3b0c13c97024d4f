"""Read-only views of the spool for the console: the newest events, held or in the history, each
with its per-sink delivery state, and the dead letters of every sink.

Plain SQL and row parsing: the queries run through :meth:`bridge.store.Store.read_query` on the
store's reader connection (``query_only``), so nothing here can change state. Payloads come along
only up to :data:`PAYLOAD_CAP` bytes each, so a page of events never holds more than a page's
worth of small payloads in memory.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Final, NewType, Protocol

import orjson

from bridge.events import Origin

ReadQuery = NewType("ReadQuery", str)
"""A statement of this module: read-only, run on the store's reader connection."""

PAYLOAD_CAP: Final = 64 << 10
"""Payloads up to this size come with a listed event (to show its routes and sender); a larger
one is left in the database."""


class Outcome(enum.StrEnum):
    """Where one (event, sink) delivery stands."""

    DELIVERED = "delivered"
    PENDING = "pending"  # waiting for its first attempt
    RETRYING = "retrying"  # at least one attempt failed; another is scheduled
    DEAD = "dead"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SinkOutcome:
    sink: str
    outcome: Outcome
    attempts: int
    error: str | None
    dead_at: float | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecentEvent:
    """An event as the console lists it. ``payload`` is None above :data:`PAYLOAD_CAP`;
    ``completed_at`` is set once it left the spool for the history."""

    seq: int
    event_id: str
    type: str
    inbox_id: str | None
    origin: Origin
    received_at: float
    completed_at: float | None
    outcomes: tuple[SinkOutcome, ...]
    payload: bytes | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadRow:
    """A dead letter without its payload."""

    sink: str
    event_id: str
    type: str
    inbox_id: str | None
    received_at: float
    attempts: int
    error: str
    dead_at: float


class Reader(Protocol):
    """What runs the queries: :class:`bridge.store.Store`."""

    def read_query(
        self, statement: ReadQuery, params: Mapping[str, object]
    ) -> Awaitable[list[Any]]: ...


# Held events: their delivery rows as a JSON array, and the sinks that already have them (the
# ``delivered`` table of a multi-sink event). History rows: delivered to every sink they name.
_HELD: Final = """SELECT e.seq, e.event_id, e.type, e.inbox_id, e.origin, e.received_at,
    NULL AS completed_at,
    (SELECT json_group_array(json_array(d.sink, d.state, d.attempts, d.last_error, d.dead_at))
        FROM deliveries AS d WHERE d.seq = e.seq) AS rows,
    (SELECT json_group_array(x.sink) FROM delivered AS x WHERE x.seq = e.seq) AS done,
    CASE WHEN e.size <= :cap THEN e.payload END AS payload
    FROM events AS e"""
_PAST: Final = """SELECT h.seq, h.event_id, h.type, h.inbox_id, h.origin, h.received_at,
    h.completed_at, '[]' AS rows, h.sinks AS done,
    CASE WHEN length(h.payload) <= :cap THEN h.payload END AS payload
    FROM history AS h"""
# Each side walks its own seq index from the newest and stops at the limit.
RECENT_SQL: Final = ReadQuery(
    f"""SELECT * FROM ({_HELD} ORDER BY e.seq DESC LIMIT :limit)
    UNION ALL SELECT * FROM ({_PAST} ORDER BY h.seq DESC LIMIT :limit)
    ORDER BY 1 DESC LIMIT :limit"""  # noqa: S608 - constant parts
)
EVENT_SQL: Final = ReadQuery(
    f"""SELECT * FROM ({_HELD} WHERE e.event_id = :event_id)
    UNION ALL SELECT * FROM ({_PAST} WHERE h.event_id = :event_id)
    ORDER BY 1 DESC LIMIT :limit"""  # noqa: S608 - constant parts
)
# The newest dead letters of each sink, at most :limit per sink.
DEAD_SQL: Final = ReadQuery(
    """SELECT sink, event_id, type, inbox_id, received_at, attempts, last_error, dead_at FROM (
        SELECT d.sink, e.event_id, e.type, e.inbox_id, e.received_at, d.attempts,
            d.last_error, d.dead_at, d.seq,
            ROW_NUMBER() OVER (PARTITION BY d.sink ORDER BY d.seq DESC) AS n
        FROM deliveries AS d JOIN events AS e ON e.seq = d.seq WHERE d.state = 'dead')
    WHERE n <= :limit ORDER BY sink, seq DESC"""
)


def _outcomes(rows: str, done: str) -> tuple[SinkOutcome, ...]:
    held: list[SinkOutcome] = []
    for sink, state, attempts, error, dead_at in orjson.loads(rows):
        if state == "dead":
            outcome = Outcome.DEAD
        else:
            outcome = Outcome.RETRYING if attempts else Outcome.PENDING
        held.append(
            SinkOutcome(sink=sink, outcome=outcome, attempts=attempts, error=error, dead_at=dead_at)
        )
    delivered = [
        SinkOutcome(sink=sink, outcome=Outcome.DELIVERED, attempts=0, error=None, dead_at=None)
        for sink in orjson.loads(done)
    ]
    return tuple(sorted([*held, *delivered], key=lambda o: o.sink))


def recent_from_row(row: Sequence[Any]) -> RecentEvent:
    seq, event_id, kind, inbox_id, origin, received_at, completed_at, rows, done, payload = row
    return RecentEvent(
        seq=seq,
        event_id=event_id,
        type=kind,
        inbox_id=inbox_id,
        origin=Origin(origin),
        received_at=received_at,
        completed_at=completed_at,
        outcomes=_outcomes(rows, done),
        payload=payload,
    )


async def recent_events(store: Reader, *, limit: int = 100) -> list[RecentEvent]:
    """The newest ``limit`` events, held or delivered, newest first."""
    rows = await store.read_query(RECENT_SQL, {"limit": limit, "cap": PAYLOAD_CAP})
    return [recent_from_row(row) for row in rows]


async def event_versions(store: Reader, event_id: str, *, limit: int = 10) -> list[RecentEvent]:
    """``event_id`` as held and as delivered (a replay holds it again), newest first."""
    params = {"event_id": event_id, "limit": limit, "cap": PAYLOAD_CAP}
    return [recent_from_row(row) for row in await store.read_query(EVENT_SQL, params)]


async def dead_letters(store: Reader, *, limit: int = 100) -> list[DeadRow]:
    """The newest ``limit`` dead letters of each sink, by sink, newest first."""
    rows = await store.read_query(DEAD_SQL, {"limit": limit})
    return [
        DeadRow(
            sink=sink,
            event_id=event_id,
            type=kind,
            inbox_id=inbox_id,
            received_at=received_at,
            attempts=attempts,
            error=error or "",
            dead_at=dead_at,
        )
        for sink, event_id, kind, inbox_id, received_at, attempts, error, dead_at in rows
    ]
