"""The event model: one OpenMail event as received, raw bytes kept, the fields the bridge needs.

Both sources normalize into :class:`Event`; the store persists it and sinks deliver ``raw``
unchanged.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from dataclasses import field
from typing import Final, TypedDict, Unpack

import orjson

from bridge import protocol
from bridge.errors import EventError, MissingEventIdError
from bridge.records import record

PER_DELIVERY_FIELDS: Final = frozenset({"attempt", "delivered_at"})
"""Top-level payload fields OpenMail changes on every delivery attempt and between the WebSocket
and webhook copies of one event (protocol notes §6): left out of an event's content identity."""

CONTENT_KEY_PREFIX: Final = "sha256:"
"""Prefix of a dedup key made from the content identity (a payload with no ``event_id``)."""


@record
class MessageFacts:
    """What routing reads of an event's ``message`` besides its addresses, taken once at parse.

    Each is None when the field is absent or not of its type (protocol notes §10: the
    classification is undocumented and missing on older messages): unknown, which no match key
    holds for. ``auto_replyable`` is only ever an explicit JSON boolean; ``has_attachments`` is
    whether ``attachments`` is a non-empty list.
    """

    verdict: str | None = None
    category: str | None = None
    auto_replyable: bool | None = None
    has_attachments: bool | None = None
    subject: str | None = None


NO_FACTS: Final = MessageFacts()
"""The facts of an event without a ``message`` (lifecycle events), or not built from a payload."""


class Origin(enum.StrEnum):
    """Which transport an event arrived by."""

    WEBSOCKET = "websocket"
    WEBHOOK = "webhook"


@record(kw_only=True)
class Event:
    """One accepted or candidate event.

    ``raw`` is the payload exactly as received (the WebSocket frame or the webhook body);
    ``received_at`` is the Unix time the bridge received it.

    ``event_id`` is the id sinks send (``X-Event-Id``): the body's ``event_id``, else the webhook's
    ``X-Event-Id`` header. ``content_id`` is the event's content identity, the SHA-256 (hex) of
    its payload without :data:`PER_DELIVERY_FIELDS` (None when the event was not built from a
    payload: then its content is unknown and never conflicts). ``dedup_key`` is what the store
    de-duplicates on: the body's ``event_id``, else ``sha256:<content_id>``, never the unsigned
    header alone; it defaults to ``event_id``.
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
    content_id: str | None = None
    dedup_key: str = ""
    via: str | None = None
    """The bridge-to-bridge transport it came by (``nats``), None when straight from OpenMail:
    ``origin`` stays OpenMail's, which sinks send on; only an event OpenMail sent this bridge
    over the WebSocket moves its replay cursor; metrics count it under ``via`` when set."""
    facts: MessageFacts = NO_FACTS
    """What routing reads of the payload's ``message`` beyond ``sender`` / ``recipient``."""
    compact: bool = field(default=False, compare=False)
    """``raw`` is known to be compact JSON that orjson writes back byte for byte, so a line sink
    writes it as it is; False when unknown, and the sink checks."""

    @property
    def from_own_websocket(self) -> bool:
        """Whether OpenMail sent it to this bridge's own WebSocket subscription."""
        return self.origin is Origin.WEBSOCKET and self.via is None

    def __post_init__(self) -> None:
        if not self.dedup_key:
            object.__setattr__(self, "dedup_key", self.event_id)

    @property
    def has_message(self) -> bool:
        return self.sender is not None or self.recipient is not None


def _text(value: str, what: str, *, max_bytes: int | None = None) -> str:
    """``value`` if it can be stored as UTF-8 (a lone surrogate, ``\\ud800``, cannot) and, with
    ``max_bytes``, is no longer than that."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise EventError(f"payload field {what!r} is not valid Unicode text") from None
    if max_bytes is not None and size > max_bytes:
        raise EventError(f"payload field {what!r} is longer than {max_bytes} bytes")
    return value


def content_identity(data: dict[str, object]) -> str:
    """The SHA-256 (hex) of ``data`` as canonical JSON, without :data:`PER_DELIVERY_FIELDS`.

    Canonical (sorted keys, no spaces, UTF-8) so that the WebSocket frame and the webhook body of
    one event, serialized differently, still hash alike. Lone surrogates (``"\\ud800"`` in the
    JSON) are hashed as they came rather than refused: the identity must exist for every payload
    the sources accept.

    Raises:
        EventError: nested too deeply to encode.
    """
    content = data.copy()  # a C-level copy and two pops: a third of a filtering comprehension
    for name in PER_DELIVERY_FIELDS:
        content.pop(name, None)
    try:
        # orjson writes the same canonical form as json.dumps(sort_keys=True, compact,
        # ensure_ascii=False) for strings, integers and structure, at a fifth of the cost; what
        # it cannot encode (an integer past 64 bits, a lone surrogate, nesting past its limit)
        # takes the standard library's path, always the same one for the same payload.
        return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
    except orjson.JSONEncodeError:
        pass
    try:
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except RecursionError:
        # Decoded a few frames higher up the stack, a payload at the parser's depth limit can be
        # one level too deep to encode here.
        raise EventError("payload is nested too deeply") from None
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _opt_str(data: dict[str, object], key: str, max_bytes: int | None = None) -> str | None:
    value = data.get(key)
    return _text(value, key, max_bytes=max_bytes) if isinstance(value, str) else None


def message_facts(message: dict[str, object]) -> MessageFacts:
    """The :class:`MessageFacts` of a decoded ``message`` object; a malformed field is unknown.

    On every accepted event's path: plain lookups, no copy and no second parse. The values are
    only compared, never written anywhere, so a lone surrogate in one does no harm: they skip the
    :func:`_text` check.
    """
    verdict = message.get("verdict")
    category = message.get("category")
    auto_replyable = message.get("auto_replyable")
    attachments = message.get("attachments")
    subject = message.get("subject")
    return MessageFacts(
        verdict if isinstance(verdict, str) else None,
        category if isinstance(category, str) else None,
        auto_replyable if isinstance(auto_replyable, bool) else None,
        bool(attachments) if isinstance(attachments, list) else None,
        subject if isinstance(subject, str) else None,
    )


class EventOptions(TypedDict, total=False):
    """How a payload becomes an :class:`Event`, beyond its bytes and origin.

    ``received_at``: Unix time of receipt; now when omitted. ``fallback_event_id``: used when the
    body has no ``event_id`` (the webhook's ``X-Event-Id``). ``require_type``: when false, a missing
    ``event`` is recorded as ``unknown`` instead of failing (a verified webhook is accepted
    whatever its shape).
    """

    received_at: float | None
    fallback_event_id: str | None
    require_type: bool


def parse_event(raw: bytes, origin: Origin, **options: Unpack[EventOptions]) -> Event:
    """Parse a payload into an :class:`Event`; ``raw`` is kept unchanged in the result.

    Raises:
        EventError: not JSON, not an object, or no usable ``event_id`` / ``event``.
    """
    try:
        data, compact = protocol.loads_checked(raw)
    except protocol.ProtocolError as exc:
        raise EventError(f"payload is {exc}") from None
    return event_from_object(data, raw, origin, compact=compact, **options)


def event_from_object(
    data: object,
    raw: bytes,
    origin: Origin,
    *,
    received_at: float | None = None,
    fallback_event_id: str | None = None,
    require_type: bool = True,
    compact: bool = False,
) -> Event:
    """Like :func:`parse_event` for a payload already decoded to ``data``; ``compact``: see
    :attr:`Event.compact`."""
    if not isinstance(data, dict):
        raise EventError(f"payload is a JSON {type(data).__name__}, not an object")
    event_id = data.get("event_id")
    body_has_id = isinstance(event_id, str) and bool(event_id)
    if not isinstance(event_id, str) or not event_id:
        if event_id is not None and not isinstance(event_id, str):
            raise EventError("payload field 'event_id' is not a string")
        if not fallback_event_id:
            raise MissingEventIdError("payload has no 'event_id'")
        event_id = fallback_event_id
    event_id = _text(event_id, "event_id", max_bytes=protocol.MAX_EVENT_ID_BYTES)
    kind = data.get("event")
    if not isinstance(kind, str) or not kind:
        if require_type:
            raise EventError("payload has no string 'event' field")
        kind = protocol.UNKNOWN_EVENT_TYPE
    kind = _text(kind, "event", max_bytes=protocol.MAX_ID_BYTES)
    content_id = content_identity(data)
    # The header is not signed: a captured body replayed with fresh X-Event-Id values must still
    # be recognised, so an event without its own id is identified by what the signature covers.
    dedup_key = event_id if body_has_id else CONTENT_KEY_PREFIX + content_id
    message = data.get("message")
    sender = recipient = None
    facts = NO_FACTS
    if isinstance(message, dict):
        sender = _opt_str(message, "from")
        recipient = _opt_str(message, "to")
        facts = message_facts(message)
    return Event(
        event_id=event_id,
        type=kind,
        inbox_id=_opt_str(data, "inbox_id", protocol.MAX_ID_BYTES),
        thread_id=_opt_str(data, "thread_id", protocol.MAX_ID_BYTES),
        sender=sender,
        recipient=recipient,
        origin=origin,
        received_at=time.time() if received_at is None else received_at,
        raw=raw,
        content_id=content_id,
        dedup_key=dedup_key,
        facts=facts,
        compact=compact,
    )
