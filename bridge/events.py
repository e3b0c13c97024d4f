"""The event model: one OpenMail event as received, raw bytes kept, the fields the bridge needs.

Both sources normalize into :class:`Event`; the store persists it and sinks deliver ``raw``
unchanged.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field

from bridge import protocol
from bridge.errors import EventError


class Origin(enum.StrEnum):
    """Which transport an event arrived by."""

    WEBSOCKET = "websocket"
    WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One accepted or candidate event.

    ``raw`` is the payload exactly as received (the WebSocket frame or the webhook body);
    ``received_at`` is the Unix time the bridge received it.
    """

    event_id: str
    type: str
    inbox_id: str | None
    thread_id: str | None
    sender: str | None
    recipient: str | None
    origin: Origin
    received_at: float
    raw: bytes = field(repr=False)

    @property
    def has_message(self) -> bool:
        return self.sender is not None or self.recipient is not None


def _text(value: str, what: str) -> str:
    """``value`` if it can be stored as UTF-8; a lone surrogate (``\\ud800``) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError(f"payload field {what!r} is not valid Unicode text") from None
    return value


def _opt_str(data: dict[str, object], key: str) -> str | None:
    value = data.get(key)
    return _text(value, key) if isinstance(value, str) else None


def parse_event(
    raw: bytes,
    origin: Origin,
    *,
    received_at: float | None = None,
    fallback_event_id: str | None = None,
    require_type: bool = True,
) -> Event:
    """Parse a payload into an :class:`Event`.

    Args:
        raw: the payload bytes, kept unchanged in the result.
        origin: the transport it arrived by.
        received_at: Unix time of receipt; now when omitted.
        fallback_event_id: used when the body has no ``event_id`` (the webhook's ``X-Event-Id``).
        require_type: when false, a missing ``event`` is recorded as ``unknown`` instead of failing
            (a verified webhook is accepted whatever its shape).

    Raises:
        EventError: not JSON, not an object, or no usable ``event_id`` / ``event``.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # also too deep, or integers too long
        raise EventError(f"payload is not JSON: {str(exc)[:120]}") from None
    return event_from_object(
        data,
        raw,
        origin,
        received_at=received_at,
        fallback_event_id=fallback_event_id,
        require_type=require_type,
    )


def event_from_object(
    data: object,
    raw: bytes,
    origin: Origin,
    *,
    received_at: float | None = None,
    fallback_event_id: str | None = None,
    require_type: bool = True,
) -> Event:
    """Like :func:`parse_event` for a payload already decoded to ``data``."""
    if not isinstance(data, dict):
        raise EventError(f"payload is a JSON {type(data).__name__}, not an object")
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        if event_id is not None and not isinstance(event_id, str):
            raise EventError("payload field 'event_id' is not a string")
        if not fallback_event_id:
            raise EventError("payload has no 'event_id'")
        event_id = fallback_event_id
    event_id = _text(event_id, "event_id")
    kind = data.get("event")
    if not isinstance(kind, str) or not kind:
        if require_type:
            raise EventError("payload has no string 'event' field")
        kind = protocol.UNKNOWN_EVENT_TYPE
    kind = _text(kind, "event")
    message = data.get("message")
    sender = recipient = None
    if isinstance(message, dict):
        sender = _opt_str(message, "from")
        recipient = _opt_str(message, "to")
    return Event(
        event_id=event_id,
        type=kind,
        inbox_id=_opt_str(data, "inbox_id"),
        thread_id=_opt_str(data, "thread_id"),
        sender=sender,
        recipient=recipient,
        origin=origin,
        received_at=time.time() if received_at is None else received_at,
        raw=raw,
    )
