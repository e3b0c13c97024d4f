"""OpenMail's wire protocol: frames, close codes, webhook signatures, and every assumption we make.

Bytes in, values out: no asyncio, no logging. Everything the public documentation does not state is
a named ``ASSUMPTION_*`` constant or a function documented as such, so that a change in OpenMail's
behaviour is a change in this one module. See ``docs/protocol.md`` and the project's protocol notes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import re
from collections.abc import Container, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Final

import orjson

from bridge.records import record

# --- Endpoint -------------------------------------------------------------------------------

DEFAULT_WS_URL: Final = "wss://api.openmail.sh/v1/ws"
WS_PATH: Final = "/v1/ws"

# --- Limits the server enforces ----------------------------------------------------------------

REPLAY_LIMIT: Final = 100
"""The server replays at most this many events after ``last_event_id``; more is a silent gap."""
MAX_CONNECTIONS: Final = 10
"""Concurrent WebSocket connections per account; the 11th is closed with 4008."""
RATE_LIMIT_MESSAGES: Final = 30
RATE_LIMIT_WINDOW: Final = 10.0
"""At most 30 client messages per 10 s on one connection, else close 4029."""
ASSUMPTION_RATE_LIMIT_COUNTS_PROTOCOL_MESSAGES: Final = True
"""The rate limit counts the client's protocol messages (§2: ``subscribe``, ``unsubscribe``,
``ping``, each replay page's ``subscribe``), not WebSocket-level ping/pong control frames."""
SERVER_PING_INTERVAL: Final = 30.0
SERVER_PONG_TIMEOUT: Final = 10.0
WEBHOOK_TIMEOUT: Final = 15.0
"""OpenMail counts a webhook delivery as failed without a 2xx within 15 s."""
WEBHOOK_TOLERANCE: Final = 300.0
"""Documented freshness window for ``X-Timestamp``."""
WEBHOOK_RETRY_DELAYS: Final = (0.0, 30.0, 60.0, 120.0, 240.0)
"""Five attempts: immediately, then +30 s, +60 s, +2 min, +4 min (about 7.5 minutes in all)."""

# --- Assumptions (not stated by the documentation) ---------------------------------------------

ASSUMPTION_HEADER_EVENT_ID_IS_EVENT_ID: Final = True
"""``X-Event-Id`` carries the body's ``event_id``; the body wins when both are present."""
ASSUMPTION_EVENT_ID_STABLE_ACROSS_CHANNELS: Final = True
"""One ``event_id`` per event, stable across webhook retries and across WebSocket/webhook."""
ASSUMPTION_RETRY_DELAY_FROM_PREVIOUS_ATTEMPT: Final = True
ASSUMPTION_WEBHOOK_EVENTS_ALSO_REPLAYED: Final = True
"""Events sent by webhook during an outage are replayed again over the WebSocket."""
ASSUMPTION_AUTH_FAILURE_FORMS: Final = ("http-401", "close-4001")
ASSUMPTION_ERROR_AFTER_CURSOR_MEANS_UNKNOWN_CURSOR: Final = True
"""An ``error`` answering a subscribe with ``last_event_id`` (no ``subscribed``): unknown cursor."""
ASSUMPTION_REPLAY_AFTER_SUBSCRIBED: Final = True
"""Replayed events follow ``subscribed``, oldest first, before live events."""
ASSUMPTION_SUBSCRIBE_REPLAYS_AGAIN: Final = True
"""A further ``subscribe`` with ``last_event_id`` on a subscribed connection replays again: the
bridge pages through a backlog longer than ``REPLAY_LIMIT`` that way."""
ASSUMPTION_FILTERS_INDEPENDENT_SETS: Final = True
ASSUMPTION_UNOWNED_INBOX_REJECTS_WHOLE_SUBSCRIBE: Final = True
ASSUMPTION_SEND_ACK: Final = False
"""``ack`` appears only in old docs; the bridge never sends it."""
UNKNOWN_EVENT_TYPE: Final = "unknown"
"""Type recorded for a verified webhook body that carries no ``event`` field (e.g. a test event)."""
LIFECYCLE_EVENT_TYPES: Final = frozenset(
    {"inbox.suspended", "inbox.reactivated", "pod.suspended", "pod.reactivated"}
)
"""Sent by webhook only, never over the WebSocket."""
MESSAGE_RECEIVED: Final = "message.received"

# --- Close codes -------------------------------------------------------------------------------


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006
    UNAUTHORIZED = 4001
    FORBIDDEN = 4003
    TOO_MANY_CONNECTIONS = 4008
    RATE_LIMITED = 4029


class CloseClass(enum.StrEnum):
    """What a client should do after the server closed the connection."""

    TRANSIENT = "transient"
    """Reconnect with the normal backoff (1001, 1006, anything unknown)."""
    RATE_LIMITED = "rate_limited"
    """Reconnect, but back off (4029)."""
    KEY_REJECTED = "key_rejected"
    """The API key was refused (4001, 4003, HTTP 401/403 on upgrade)."""
    TOO_MANY_CONNECTIONS = "too_many_connections"
    """The account already holds the maximum of connections (4008)."""


def classify_close(code: int | None) -> CloseClass:
    if code in (CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN):
        return CloseClass.KEY_REJECTED
    if code == CloseCode.TOO_MANY_CONNECTIONS:
        return CloseClass.TOO_MANY_CONNECTIONS
    if code == CloseCode.RATE_LIMITED:
        return CloseClass.RATE_LIMITED
    return CloseClass.TRANSIENT


def classify_handshake_status(status: int) -> CloseClass:
    """The HTTP status of a refused upgrade, in the same classes as close codes."""
    if status in (401, 403):
        return CloseClass.KEY_REJECTED
    if status == 429:
        return CloseClass.RATE_LIMITED
    return CloseClass.TRANSIENT


def ws_url_from_base(base_url: str) -> str:
    """Build the WebSocket URL from a REST base URL, as OpenMail's own clients do."""
    if base_url.startswith("https://"):
        base_url = "wss://" + base_url[len("https://") :]
    elif base_url.startswith("http://"):
        base_url = "ws://" + base_url[len("http://") :]
    return base_url.rstrip("/") + WS_PATH


# --- Frames ------------------------------------------------------------------------------------


class ProtocolError(ValueError):
    """A frame that is not what the protocol allows (not JSON, not an object, no type)."""


MAX_EVENT_ID_BYTES: Final = 256
"""ASSUMPTION: OpenMail's event ids are short (``evt_`` and a few dozen characters). A longer one
is refused on both sources rather than stored, indexed and logged at any length."""
MAX_ID_BYTES: Final = 256
"""ASSUMPTION: so are ``inbox_id`` (``inb_``), ``thread_id`` (``thr_``) and the ``event`` type. They
are logged, shown, used in file paths and NATS subjects and keyed on in memory, so a longer one
refuses the event too."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ProtocolError(f"JSON with the key {key[:64]!r} given twice")
            seen.add(key)
    return obj


def _no_constant(name: str) -> object:
    raise ProtocolError(f"JSON with {name}, which JSON does not allow")


def _finite(text: str) -> float:
    # 1e400 is a JSON number that no float holds: read as inf, it would be written back as
    # Infinity, which is not JSON, to every sink that re-encodes the event.
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"JSON with the number {text[:40]}, too large for a float")
    return value


def loads_strict(raw: bytes | str) -> object:
    """Decode JSON as strictly as the signature vouches for it.

    A key given twice is refused: parsers disagree on which copy wins, so an agent reading the
    first ``inbox_id`` could be shown an inbox the signed bytes never meant. ``NaN`` and
    ``Infinity`` are refused too: Python accepts them, most JSON parsers downstream do not.

    Raises:
        ProtocolError: not UTF-8 JSON, too deep, an integer past Python's digit limit, a
            duplicate key or a non-finite number.
    """
    return loads_checked(raw)[0]


def loads_checked(raw: bytes | str) -> tuple[object, bool]:
    """:func:`loads_strict`, and whether ``raw`` is compact JSON that orjson writes back byte for
    byte: such bytes are one JSON line as they are, and a sink may write them unchanged.

    Raises:
        ProtocolError: as :func:`loads_strict`.
    """
    if isinstance(raw, bytes):
        try:
            fast = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library below says what is wrong, or parses what orjson will not
        else:
            # orjson keeps the last of duplicate keys silently. Its compact output equal to the
            # input proves there were none: that output holds each key once. Compact JSON (what
            # JSON.stringify sends) takes this path; anything else is parsed again strictly.
            try:
                compact = orjson.dumps(fast)
            except orjson.JSONEncodeError:  # nested past what orjson writes: checked below
                compact = b""
            if compact == raw:
                return fast, True
    try:
        return json.loads(
            raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite
        ), False
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8 and integers past Python's digit limit; RecursionError,
        # nesting deeper than the parser goes.
        raise ProtocolError(f"not JSON: {str(exc)[:120]}") from None


def subscribe_frame(
    inbox_ids: Sequence[str] = (),
    event_types: Sequence[str] = (),
    last_event_id: str | None = None,
) -> str:
    frame: dict[str, object] = {"type": "subscribe"}
    if inbox_ids:
        frame["inbox_ids"] = list(inbox_ids)
    if event_types:
        frame["event_types"] = list(event_types)
    if last_event_id:
        frame["last_event_id"] = last_event_id
    return json.dumps(frame, separators=(",", ":"))


def unsubscribe_frame(inbox_ids: Sequence[str] | None = None) -> str:
    frame: dict[str, object] = {"type": "unsubscribe"}
    if inbox_ids is not None:
        frame["inbox_ids"] = list(inbox_ids)
    return json.dumps(frame, separators=(",", ":"))


PING_FRAME: Final = '{"type":"ping"}'
PONG_FRAME: Final = '{"type":"pong"}'


class FrameKind(enum.StrEnum):
    SUBSCRIBED = "subscribed"
    UNSUBSCRIBED = "unsubscribed"
    PONG = "pong"
    ERROR = "error"
    EVENT = "event"
    UNKNOWN = "unknown"


@record
class ServerFrame:
    """A parsed server-to-client text frame. ``data`` is the decoded JSON object."""

    kind: FrameKind
    data: dict[str, object]
    raw: bytes
    compact: bool = False
    """``raw`` is compact JSON written back byte for byte (:func:`loads_checked`)."""

    @property
    def message(self) -> str:
        """The ``message`` of an ``error`` frame (empty when absent)."""
        value = self.data.get("message")
        return value if isinstance(value, str) else ""

    @property
    def type_name(self) -> str:
        value = self.data.get("type")
        return value if isinstance(value, str) else ""


def parse_server_frame(raw: bytes | str) -> ServerFrame:
    """Classify one text frame from the server. Events carry ``event``; control frames ``type``.

    Raises:
        ProtocolError: not JSON, not an object, or neither ``type`` nor ``event``.
    """
    try:
        data_bytes = raw.encode() if isinstance(raw, str) else raw
        data, compact = loads_checked(data_bytes)
    except UnicodeEncodeError:
        raise ProtocolError("frame is not valid Unicode text") from None
    except ProtocolError as exc:
        raise ProtocolError(f"frame is {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"frame is a JSON {type(data).__name__}, not an object")
    if "event" in data and "type" not in data:
        return ServerFrame(FrameKind.EVENT, data, data_bytes, compact)
    kind_name = data.get("type")
    if not isinstance(kind_name, str):
        raise ProtocolError("frame has neither 'type' nor 'event'")
    try:
        kind = FrameKind(kind_name)
    except ValueError:
        kind = FrameKind.UNKNOWN
    if kind is FrameKind.EVENT:  # a control frame literally typed "event" is not an event
        kind = FrameKind.UNKNOWN
    return ServerFrame(kind, data, data_bytes)


def error_is_unowned_inbox(message: str) -> bool:
    """ASSUMPTION: the error for an inbox the key does not own mentions the inbox or ownership."""
    lowered = message.lower()
    return "inbox" in lowered and any(
        word in lowered for word in ("own", "not found", "forbidden", "access", "unknown")
    )


ASSUMPTION_AUTH_ERROR_WORDS: Final = ("unauthori", "api key", "invalid key", "revoked", "forbidden")
"""Words that mark an ``error`` frame as a refused key. OpenMail gives errors no code, and a
refused key is not retried like a passing failure, so the text is all there is to go on."""


def error_looks_like_auth(message: str) -> bool:
    """ASSUMPTION (``ASSUMPTION_AUTH_ERROR_WORDS``): an ``error`` answering ``subscribe`` that
    names the key or authorisation means the key was refused, as a 4001 close would."""
    lowered = message.lower()
    return any(word in lowered for word in ASSUMPTION_AUTH_ERROR_WORDS)


def occurred_at(data: Mapping[str, object]) -> float | None:
    """An event's ``occurred_at`` (ISO-8601) as a Unix time; None when missing or unreadable."""
    text = data.get("occurred_at")
    if not isinstance(text, str) or len(text) > 64:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None  # OpenMail's times are UTC and say so; a local time could be anything
    return moment.timestamp()


def replayed(occurred: float | None, subscribed_at: float) -> bool | None:
    """ASSUMPTION (``ASSUMPTION_REPLAY_AFTER_SUBSCRIBED``): whether an event that ``occurred`` (a
    Unix time) on a subscription answered at ``subscribed_at`` was replayed: live events occur
    after the subscribe. None when the event has no readable time. Used only to count a replay
    against ``REPLAY_LIMIT``.

    No slack either way. An event that occurred a moment before the subscribe was missed during
    the reconnect, and left out of the count it would leave the page after a full replay unasked
    for. A live event counted as replayed costs more than a repeat: were it the 100th, the next
    page would be asked for after it, and the replay still due would be skipped. So the host's
    clock must agree with OpenMail's (NTP) to within the time a reconnect takes."""
    if occurred is None:
        return None
    return occurred < subscribed_at


# --- Webhook signatures ------------------------------------------------------------------------

SIGNATURE_HEADER: Final = "X-Signature"
TIMESTAMP_HEADER: Final = "X-Timestamp"
EVENT_ID_HEADER: Final = "X-Event-Id"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """OpenMail's signature: lowercase hex HMAC-SHA256(secret, ``{timestamp}.{raw body}``)."""
    # Fed in two parts, not joined: joining copies the body, and a webhook body may be 10 MiB.
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b".", hashlib.sha256)
    digest.update(body)
    return digest.hexdigest()


def signature_matches(secrets: Iterable[str], timestamp: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` is valid under any of ``secrets``; constant-time per secret."""
    if not signature.isascii():
        return False  # a hex digest is ASCII; anything else cannot match
    given = signature.strip().lower().encode()
    ok = False
    for secret in secrets:
        # Every candidate is compared, so the time taken does not reveal which one matched.
        ok |= hmac.compare_digest(sign(secret, timestamp, body).encode(), given)
    return ok


class TimestampProblem(enum.StrEnum):
    MISSING = "missing_timestamp"
    MALFORMED = "malformed_timestamp"
    STALE = "stale_timestamp"


def check_timestamp(value: str | None, now: float, tolerance: float) -> TimestampProblem | None:
    """None when ``X-Timestamp`` is present, an integer, and within ``tolerance`` of ``now``."""
    if value is None or not value.strip():
        return TimestampProblem.MISSING
    text = value.strip()
    if _TIMESTAMP.fullmatch(text) is None:
        return TimestampProblem.MALFORMED
    if abs(now - int(text)) > tolerance:
        return TimestampProblem.STALE
    return None


_TIMESTAMP: Final = re.compile(r"-?[0-9]{1,12}")
_SIGNATURE: Final = re.compile(r"[0-9a-fA-F]{64}")


def signature_well_formed(value: str) -> bool:
    """Whether ``X-Signature`` has the shape of OpenMail's: 64 hex digits (HMAC-SHA256).

    Checked before the body is read, so a request that cannot match costs no body bytes.
    """
    return _SIGNATURE.fullmatch(value.strip()) is not None


_INBOX_ID: Final = re.compile(rb'"inbox_id"\s*:\s*"([^"\\]{1,256})"')
_INBOX_SCAN: Final = 64
"""``inbox_id`` strings read from unverified bytes at most, however many a body holds."""


def named_inboxes(body: bytes | bytearray, known: Container[str], limit: int = 4) -> list[str]:
    """The inboxes of ``known`` that unverified ``body`` names as an ``inbox_id`` string, in order,
    at most ``limit`` of them: which per-inbox secrets are worth trying, found without decoding
    (a forged body costs a byte search and ``limit`` HMACs, not a parse). Only a hint: what the
    verified body claims (:func:`claimed_inbox`) decides."""
    # Searched as the JSON decoder reads it: UTF-8 as it is (no copy), UTF-16/32 re-encoded.
    encoding = json.detect_encoding(body)
    if not encoding.startswith("utf-8"):
        body = bytes(body).decode(encoding, "replace").encode("utf-8", "replace")
    found: list[str] = []
    for n, match in enumerate(_INBOX_ID.finditer(body)):
        if n == _INBOX_SCAN or len(found) == limit:
            break
        name = match.group(1).decode("utf-8", "replace")
        if name in known and name not in found:
            found.append(name)
    return found


def claimed_inbox(data: object) -> str | None:
    """The ``inbox_id`` an unverified body claims: only ever used to pick which secret to try."""
    if isinstance(data, dict):
        inbox = data.get("inbox_id")
        if isinstance(inbox, str):
            return inbox
    return None


def not_auto_replyable(payload: bytes) -> bool:
    """Whether an event's ``message.auto_replyable`` is an explicit ``false`` (protocol notes
    §10: only that means "do not answer"; absent is unknown). Parses only a payload that names
    the field, so other payloads cost one substring search."""
    if b'"auto_replyable"' not in payload:
        return False
    try:
        data = loads_strict(payload)
    except ProtocolError:
        return False
    message = data.get("message") if isinstance(data, dict) else None
    return isinstance(message, dict) and message.get("auto_replyable") is False
