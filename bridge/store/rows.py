"""What the store hands out: the outcome of an accept, the delivery, dead-letter and quarantine
rows, and the one layout of each row, from which both the SELECT column list and the value built
from a fetched row come.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from bridge.events import Event, Origin
from bridge.plan import Note
from bridge.records import record


class AcceptOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    # A known id with other content or another inbox: answered like a duplicate, never
    # delivered, quarantined.
    CONFLICT = "conflict"


class ConflictReason(enum.StrEnum):
    """Why an event is a conflict rather than a duplicate."""

    CONTENT = "content_mismatch"  # its dedup key was seen with other content
    INBOX = "inbox_mismatch"  # its dedup key was seen for another inbox
    ID_REUSED = "event_id_reused"  # its key is new, but the id it is sent under is taken


@record(kw_only=True)
class Delivery:
    """One (event, sink) outbox row, with what the sink needs to deliver it."""

    id: int
    seq: int
    sink: str
    event_id: str
    type: str
    inbox_id: str | None
    thread_id: str | None
    origin: Origin
    received_at: float
    payload: bytes
    attempts: int
    last_error: str | None
    not_before: float | None = None
    """Held by a route's rate limit until then."""
    window_closes: float | None = None
    """Gathered in its thread's debounce window, which closes then (and is named by it)."""
    compact: bool = dataclasses.field(default=False, compare=False)
    """``payload`` is known to be compact JSON (:attr:`Event.compact`); False when unknown."""

    @property
    def due(self) -> float | None:
        """When it may go: the later of its hold and its window; None at once."""
        if self.not_before is None:
            return self.window_closes
        if self.window_closes is None:
            return self.not_before
        return max(self.not_before, self.window_closes)

    @classmethod
    def of_accepted(
        cls,
        event: Event,
        *,
        id: int,
        seq: int,
        sink: str,
        not_before: float | None = None,
        window_closes: float | None = None,
    ) -> Delivery:
        """The row an accept of ``event`` has just inserted for ``sink``: never attempted."""
        return cls(
            id=id,
            seq=seq,
            sink=sink,
            event_id=event.event_id,
            type=event.type,
            inbox_id=event.inbox_id,
            thread_id=event.thread_id,
            origin=event.origin,
            received_at=event.received_at,
            payload=event.raw,
            attempts=0,
            last_error=None,
            not_before=not_before,
            window_closes=window_closes,
            compact=event.compact,
        )


@record(kw_only=True)
class AcceptResult:
    outcome: AcceptOutcome
    seq: int | None  # seq and deliveries only when ACCEPTED
    deliveries: tuple[Delivery, ...]
    conflict: ConflictReason | None = None  # only when CONFLICT
    quarantined: bool = False  # a CONFLICT is in the quarantine (false past its row cap)
    notes: tuple[Note, ...] = ()  # what routes' guards and limits did (only when ACCEPTED)


DUPLICATE: Final = AcceptResult(outcome=AcceptOutcome.DUPLICATE, seq=None, deliveries=())


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Quarantined:
    """A conflicting event kept for inspection; ``payload`` is None when it did not fit."""

    id: int
    event_id: str
    dedup_key: str
    reason: str
    origin: Origin
    type: str
    inbox_id: str | None
    received_at: float
    content_id: str | None
    quarantined_at: float
    payload: bytes | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    delivery: Delivery
    error: str
    dead_at: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SinkCounts:
    pending: int
    dead: int


class ReplayOutcome(enum.StrEnum):
    """What asking to deliver a past event to a sink again did."""

    QUEUED = "queued"  # a new pending row: the sink gets the event again
    ALREADY_HELD = "already_held"  # the event is still held with a row for that sink
    UNKNOWN = "unknown"  # no such event in the history


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEvent:
    """An event delivered to every sink it had rows for, kept after it left the spool.

    ``payload`` is None in a listing, which leaves payloads unread.
    """

    seq: int
    event_id: str
    type: str
    inbox_id: str | None
    thread_id: str | None
    origin: Origin
    received_at: float
    completed_at: float  # when its last delivery row was deleted as delivered
    sinks: tuple[str, ...]  # the sinks it was delivered to
    notes: tuple[Note, ...]  # what routes' guards and limits did to it
    payload: bytes | None


# -- row layouts ---------------------------------------------------------------------------------

# Where each Delivery field is read from, in queries joining ``deliveries AS d`` with
# ``events AS e``. The SELECT lists the fields in the dataclass's order, so a field added to
# Delivery without a column here fails at import, not at the first read.
_DELIVERY_SOURCE: Final[Mapping[str, str]] = {
    "id": "d.id",
    "seq": "d.seq",
    "sink": "d.sink",
    "event_id": "e.event_id",
    "type": "e.type",
    "inbox_id": "e.inbox_id",
    "thread_id": "e.thread_id",
    "origin": "e.origin",
    "received_at": "e.received_at",
    "payload": "e.payload",
    "attempts": "d.attempts",
    "last_error": "d.last_error",
    "not_before": "d.not_before",
    "window_closes": "d.window_closes",
    "compact": "0",  # not stored: a payload read back is checked by the sink that writes it
}
_DELIVERY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Delivery))
DELIVERY_COLUMNS: Final = ", ".join(_DELIVERY_SOURCE[name] for name in _DELIVERY_FIELDS)
"""The SELECT list of a Delivery (read it back with :func:`delivery_from_row`)."""
DEAD_LETTER_COLUMNS: Final = f"{DELIVERY_COLUMNS}, d.dead_at"
"""The SELECT list of a DeadLetter: its delivery, then when it died."""

# The quarantine table names its columns as Quarantined names its fields.
_QUARANTINED_FIELDS: Final = tuple(f.name for f in dataclasses.fields(Quarantined))
QUARANTINED_COLUMNS: Final = ", ".join(_QUARANTINED_FIELDS)
"""The SELECT list of a Quarantined, from the ``quarantine`` table."""


# The history table names its columns as HistoryEvent names its fields; sinks is a JSON array.
_HISTORY_FIELDS: Final = tuple(f.name for f in dataclasses.fields(HistoryEvent))
HISTORY_COLUMNS: Final = ", ".join(_HISTORY_FIELDS)
"""The SELECT list of a HistoryEvent, from the ``history`` table."""
HISTORY_SUMMARY_COLUMNS: Final = HISTORY_COLUMNS.removesuffix("payload") + "NULL"
"""The SELECT list of a HistoryEvent without its payload."""


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    """A Delivery from a row selected as :data:`DELIVERY_COLUMNS`."""
    fields = dict(zip(_DELIVERY_FIELDS, row, strict=True))
    return Delivery(**fields | {"origin": Origin(fields["origin"]), "compact": False})


def dead_letter_from_row(row: Sequence[Any]) -> DeadLetter:
    """A DeadLetter from a row selected as :data:`DEAD_LETTER_COLUMNS`."""
    *columns, dead_at = row
    delivery = delivery_from_row(columns)
    return DeadLetter(delivery=delivery, error=delivery.last_error or "", dead_at=dead_at)


def quarantined_from_row(row: Sequence[Any]) -> Quarantined:
    """A Quarantined from a row selected as :data:`QUARANTINED_COLUMNS`."""
    fields = dict(zip(_QUARANTINED_FIELDS, row, strict=True))
    return Quarantined(**fields | {"origin": Origin(fields["origin"])})


def history_from_row(row: Sequence[Any]) -> HistoryEvent:
    """A HistoryEvent from a row selected as :data:`HISTORY_COLUMNS` (or the summary's)."""
    fields = dict(zip(_HISTORY_FIELDS, row, strict=True))
    notes = fields["notes"]
    return HistoryEvent(
        **fields
        | {
            "origin": Origin(fields["origin"]),
            "sinks": tuple(orjson.loads(fields["sinks"])),
            "notes": notes_from_json(notes),
        }
    )


def notes_json(notes: Sequence[Note]) -> str | None:
    """How an event's notes are stored: a JSON array, or NULL for none."""
    if not notes:
        return None
    return orjson.dumps([note.as_dict() for note in notes]).decode()


def notes_from_json(text: str | None) -> tuple[Note, ...]:
    return tuple(Note.from_dict(item) for item in orjson.loads(text)) if text else ()
