"""Recent events and dead letters as the console shows them (``/api/events``, ``/api/dead``).

Routes matched are computed with the running router from the stored payload, so they say what
the routes would do with the event now (after a reload, possibly not what they did). The sender
and subject are read from the payload only when ``admin.show_content`` is on. Pure: store rows
in, JSON-ready dicts out; errors are masked by the caller, as ``/status`` masks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final

from bridge import protocol
from bridge.errors import EventError
from bridge.events import Event, event_from_object
from bridge.store.recent import DeadRow, Outcome, RecentEvent, SinkOutcome

CONTENT_CHARS: Final = 300
"""Longest sender or subject shown; the rest is cut."""

Routes = Callable[[Event], Sequence[str]]
"""The names of the routes an event matches (the running router's)."""


def _text(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    # A lone surrogate (legal in JSON, "\ud83d") cannot be written into the page as UTF-8.
    return value[:CONTENT_CHARS].encode("utf-8", "replace").decode("utf-8")


def content(data: Mapping[str, object]) -> dict[str, str | None]:
    """The sender and subject of a message event's payload (None for what it lacks)."""
    message = data.get("message")
    if not isinstance(message, Mapping):
        return {"from": None, "subject": None}
    return {"from": _text(message.get("from")), "subject": _text(message.get("subject"))}


def _parsed(event: RecentEvent) -> tuple[Event, Mapping[str, object]] | None:
    if event.payload is None:
        return None
    try:
        data = protocol.loads_strict(event.payload)
        parsed = event_from_object(
            data,
            event.payload,
            event.origin,
            received_at=event.received_at,
            fallback_event_id=event.event_id,
            require_type=False,
        )
    except (protocol.ProtocolError, EventError):
        return None
    return (parsed, data) if isinstance(data, Mapping) else None


Attempts = Mapping[tuple[str, str], int]
"""The attempt that delivered an (event id, sink), as the activity feed recorded it."""


def _attempts(event: RecentEvent, outcome: SinkOutcome, delivered: Attempts) -> int | None:
    """The attempts made: for a delivered row, the one that delivered it (the feed's number,
    as ``tail`` shows it), None when the feed no longer holds it: the spool keeps no count for
    delivered rows, and 0 would say it was never tried."""
    if outcome.outcome is Outcome.DELIVERED:
        return delivered.get((event.event_id, outcome.sink))
    return outcome.attempts


def event_json(
    event: RecentEvent, routes: Routes, *, show_content: bool, delivered: Attempts
) -> dict[str, object]:
    """One recent event: ids, source, routes matched (None when its payload was too large to
    read here), the outcome at each sink, and with ``show_content`` its sender and subject."""
    parsed = _parsed(event)
    item: dict[str, object] = {
        "seq": event.seq,
        "event_id": event.event_id,
        "source": event.origin.value,
        "inbox_id": event.inbox_id,
        "type": event.type,
        "received_at": event.received_at,
        "completed_at": event.completed_at,
        "routes": list(routes(parsed[0])) if parsed is not None else None,
        "outcomes": [
            {
                "sink": o.sink,
                "outcome": o.outcome.value,
                "attempts": _attempts(event, o, delivered),
                "error": o.error,
                "dead_at": o.dead_at,
            }
            for o in event.outcomes
        ],
    }
    if show_content:
        item["content"] = content(parsed[1]) if parsed is not None else None
    return item


def dead_json(rows: Sequence[DeadRow], counts: Mapping[str, int]) -> list[dict[str, object]]:
    """Dead letters per sink: every sink with some (``counts``: sink -> dead rows), the newest
    of each listed."""
    listed: dict[str, list[dict[str, object]]] = {sink: [] for sink in sorted(counts)}
    for row in rows:
        listed.setdefault(row.sink, []).append(
            {
                "event_id": row.event_id,
                "type": row.type,
                "inbox_id": row.inbox_id,
                "received_at": row.received_at,
                "attempts": row.attempts,
                "error": row.error,
                "dead_at": row.dead_at,
            }
        )
    return [
        {"sink": sink, "count": max(counts.get(sink, 0), len(items)), "items": items}
        for sink, items in listed.items()
    ]
