"""The WebSocket session core: what the bridge sends OpenMail on one connection, what each frame
it receives means, how the connection's end is classified, and the source's standing across
connections (its ``/status``, and how loudly a change is logged).

No I/O and no clock of its own, as the ``websockets`` library keeps its protocol apart from its
asyncio connection: the loop in ``bridge/sources/websocket.py`` reads and writes the socket, passes
the time in, and acts on the values returned here.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bridge import protocol
from bridge.backoff import Pace
from bridge.config import OpenMailConfig
from bridge.errors import EventError
from bridge.events import Event, Origin, event_from_object
from bridge.protocol import CloseClass, FrameKind
from bridge.records import record

MESSAGE_TOO_BIG: Final = 1009
"""aiohttp closes with this when a frame exceeds ``max_msg_size`` (``webhook.max_body``)."""
ABNORMAL: Final = int(protocol.CloseCode.ABNORMAL)


class ConnectionState(enum.StrEnum):
    """The WebSocket source's state, as ``/status`` and ``/readyz`` show it."""

    IDLE = "idle"
    CONNECTING = "connecting"
    SUBSCRIBED = "subscribed"
    DOWN = "down"
    PAUSED = "paused"
    """Closed on purpose: the spool cannot take events; reconnecting once it can."""
    STOPPED = "stopped"


class DisconnectKind(enum.StrEnum):
    """Why a connection ended, which decides how soon to reconnect and how loudly to log it."""

    TRANSIENT = CloseClass.TRANSIENT.value
    RATE_LIMITED = CloseClass.RATE_LIMITED.value
    KEY_REJECTED = CloseClass.KEY_REJECTED.value
    TOO_MANY_CONNECTIONS = CloseClass.TOO_MANY_CONNECTIONS.value
    SUBSCRIBE_REJECTED = "subscribe_rejected"
    """A configuration problem (an inbox the key does not own): retried at the cap, as a bad key
    is."""
    PUSHBACK = "pushback"
    """The spool is full or failing: closed on purpose until it can take events again."""
    ACCEPT_FAILED = "accept_failed"
    """Accepting an event failed otherwise (a bug): reconnected with backoff, since the replay
    brings the same event back first, and at once would spin."""
    STOPPING = "stopping"
    """The bridge is stopping: no reconnect."""

    @classmethod
    def of(cls, close_class: CloseClass) -> DisconnectKind:
        return cls(close_class.value)

    @property
    def pace(self) -> Pace:
        return _PACE.get(self, Pace.NORMAL)

    @property
    def rejected(self) -> bool:
        """Retrying sooner cannot mend it: logged as ERROR once, then retried at the cap."""
        return self.pace is Pace.AT_CAP

    @property
    def hint(self) -> str:
        return _HINTS.get(self, "")

    def hint_for(self, *, webhook: bool) -> str:
        """The hint, saying so when a webhook listener takes events meanwhile."""
        hint = self.hint
        return f"{hint} (events still arrive by webhook meanwhile)" if hint and webhook else hint


_PACE: Final = {
    DisconnectKind.KEY_REJECTED: Pace.AT_CAP,
    DisconnectKind.TOO_MANY_CONNECTIONS: Pace.AT_CAP,
    DisconnectKind.SUBSCRIBE_REJECTED: Pace.AT_CAP,
    DisconnectKind.RATE_LIMITED: Pace.SLOWER,
    DisconnectKind.PUSHBACK: Pace.NOW,  # the wait for room happens before the next connect
}
_HINTS: Final = {
    DisconnectKind.KEY_REJECTED: "check openmail.api_key; the bridge keeps retrying at the "
    "backoff cap",
    DisconnectKind.TOO_MANY_CONNECTIONS: "the account holds 10 WebSocket connections already; "
    "close other clients",
    DisconnectKind.SUBSCRIBE_REJECTED: "remove inbox ids this API key does not own from "
    "openmail.websocket.inbox_ids",
}
GAP_HINTS: Final = {
    "cursor_reset": "OpenMail does not know the replay cursor; events since it may be missed "
    "unless they came by webhook",
    "replay_limit": "the replay hit OpenMail's maximum; the bridge asks for the next page, and if "
    "OpenMail does not replay it, events may have been missed on this path unless they came by "
    "webhook",
    "refused_without_cursor": "events were read and not stored (spool full or not writable) "
    "before any WebSocket event was: with no cursor to replay from, OpenMail will not send them "
    "again; check the sink's outage and state.max_bytes / state.min_free",
}
"""What to tell the operator for each ``reason`` of ``openmail_bridge_possible_gaps_total``."""
_CLOSE_REASONS: Final = {
    CloseClass.KEY_REJECTED: "the API key was rejected",
    CloseClass.TOO_MANY_CONNECTIONS: "the account has too many WebSocket connections",
    CloseClass.RATE_LIMITED: "rate limited by OpenMail",
}


@dataclass(frozen=True, slots=True)
class Disconnect:
    """How a connection ended (or failed to start)."""

    kind: DisconnectKind
    reason: str
    code: int | None = None
    room_needed: int = 0
    """For a pushback: the size of the event the spool refused, which must fit before reconnecting
    (reconnecting sooner would only replay it into another refusal, in a tight loop)."""

    @property
    def frame_too_large(self) -> bool:
        return self.code == MESSAGE_TOO_BIG

    @classmethod
    def handshake_refused(cls, status: int) -> Disconnect:
        kind = DisconnectKind.of(protocol.classify_handshake_status(status))
        return cls(kind, f"upgrade refused with HTTP {status}")

    @classmethod
    def unreachable(cls, error: BaseException) -> Disconnect:
        return cls(DisconnectKind.TRANSIENT, f"cannot connect: {error}")

    @classmethod
    def connection_failed(cls, error: BaseException) -> Disconnect:
        """The socket failed under a send or a read: the same as a dropped connection."""
        return cls(DisconnectKind.TRANSIENT, f"connection failed: {error}", ABNORMAL)

    @classmethod
    def accept_failed(cls, failure: BaseException) -> Disconnect:
        return cls(DisconnectKind.ACCEPT_FAILED, f"accepting an event failed: {failure!r}")

    @classmethod
    def pushed_back(cls, failure: BaseException, room_needed: int) -> Disconnect:
        return cls(
            DisconnectKind.PUSHBACK, f"the spool pushed back: {failure}", room_needed=room_needed
        )


STOPPING: Final = Disconnect(DisconnectKind.STOPPING, "stopping")


class InvalidReason(enum.StrEnum):
    """Why a frame was ignored: the ``reason`` label of ``websocket_frames_invalid_total``."""

    NOT_JSON = "not_json"
    BINARY = "binary"
    UNKNOWN_TYPE = "unknown_type"
    BAD_EVENT = "bad_event"


# --- what a received frame means -----------------------------------------------------------------


@record
class Deliver:
    """An event to hand to the spool."""

    event: Event
    next_page: str | None = None
    """A ``subscribe`` to send: the replay reached ``REPLAY_LIMIT``; this asks for the events after
    this one (ASSUMPTION_SUBSCRIBE_REPLAYS_AGAIN: subscribes accumulate, so repeating ours with a
    new cursor changes no filter)."""
    replay_limit: bool = False
    """The replay reached ``REPLAY_LIMIT`` for the first time on this connection: warn."""


@dataclass(frozen=True, slots=True)
class Invalid:
    """A frame to count and pass over; never a reason to drop the connection."""

    reason: InvalidReason
    detail: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` frame on a subscribed connection."""

    message: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    """``subscribed`` arrived: the subscription carries ``cursor``."""

    cursor: str | None


@dataclass(frozen=True, slots=True)
class SubscribeError:
    """An ``error`` instead of ``subscribed``. It has no code: a close right after it says what it
    was, so the loop waits briefly for one before asking ``subscribe_failed``."""

    message: str


@dataclass(frozen=True, slots=True)
class ResetCursor:
    """OpenMail does not know the cursor (ASSUMPTION_ERROR_AFTER_CURSOR_MEANS_UNKNOWN_CURSOR):
    forget it and send ``frame``, the same subscription without it."""

    cursor: str
    message: str
    frame: str


Received = Deliver | Invalid | ServerError | Subscribed | SubscribeError | None
"""What a text frame means; None for a control frame that needs nothing (``pong``...)."""


class Session:
    """One connection's protocol state, from ``subscribe`` to close.

    Args:
        inbox_ids, event_types: the subscription's filters.
        cursor: the replay cursor to subscribe with (the last event durably handled).
        max_body: the frame size bound, named when a frame exceeds it.
    """

    __slots__ = (
        "_event_types",
        "_inbox_ids",
        "_live_seen",
        "_max_body",
        "_peer_close_code",
        "_replayed",
        "_subscribed_at",
        "cursor",
    )

    def __init__(
        self,
        inbox_ids: Sequence[str],
        event_types: Sequence[str],
        cursor: str | None,
        *,
        max_body: int,
    ) -> None:
        self._inbox_ids = tuple(inbox_ids)
        self._event_types = tuple(event_types)
        self._max_body = max_body
        self.cursor = cursor
        self._subscribed_at: float | None = None
        self._replayed = 0
        self._live_seen = False  # an event that surely occurred after 'subscribed' came
        self._peer_close_code: int | None = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed_at is not None

    def subscribe(self) -> str:
        """The first frame to send: ``subscribe`` with the filters and the cursor."""
        return protocol.subscribe_frame(self._inbox_ids, self._event_types, self.cursor)

    def receive(self, text: str, now: float) -> Received:
        """What a text frame means. ``now``: the wall-clock time it arrived."""
        try:
            frame = protocol.parse_server_frame(text)
        except protocol.ProtocolError as exc:
            return Invalid(InvalidReason.NOT_JSON, str(exc))
        match frame.kind:
            case FrameKind.EVENT:
                return self._event(frame)
            case FrameKind.UNKNOWN:
                return Invalid(InvalidReason.UNKNOWN_TYPE, f"type {frame.type_name!r}")
            case FrameKind.ERROR:
                if self.subscribed:
                    return ServerError(frame.message)
                return SubscribeError(frame.message)
            case FrameKind.SUBSCRIBED if not self.subscribed:
                self._subscribed_at = now
                return Subscribed(self.cursor)
        return None

    @staticmethod
    def binary(size: int) -> Invalid:
        """The protocol is JSON text: a binary frame is never an event."""
        return Invalid(InvalidReason.BINARY, f"{size} bytes")

    def receive_after_error(self, text: str) -> Deliver | Invalid | None:
        """The frame read while waiting for a close to explain a ``SubscribeError``: an event is
        kept like any other before ``subscribed``; anything else is passed over uncounted."""
        try:
            frame = protocol.parse_server_frame(text)
        except protocol.ProtocolError:
            return None
        return self._event(frame) if frame.kind is FrameKind.EVENT else None

    def subscribe_failed(self, message: str) -> Disconnect | ResetCursor:
        """What an ``error`` answering ``subscribe`` meant, when no close explained it."""
        # Inbox first: "inbox ... is not owned by this API key" also names the key.
        if protocol.error_is_unowned_inbox(message):
            return Disconnect(
                DisconnectKind.SUBSCRIBE_REJECTED,
                "OpenMail refused the subscription for "
                f"openmail.websocket.inbox_ids {list(self._inbox_ids)}: {message}",
            )
        if protocol.error_looks_like_auth(message):
            return Disconnect(DisconnectKind.KEY_REJECTED, f"OpenMail said: {message}")
        if self.cursor is not None:
            forgotten, self.cursor = self.cursor, None
            return ResetCursor(forgotten, message, self.subscribe())
        return Disconnect(DisconnectKind.TRANSIENT, f"subscribe failed: {message}")

    @staticmethod
    def no_answer(timeout: float) -> Disconnect:
        return Disconnect(DisconnectKind.TRANSIENT, f"no 'subscribed' within {timeout:g}s")

    def peer_closed(self, code: int) -> None:
        """The close frame's code. aiohttp reports 1006 when the server drops TCP right after its
        close frame, even though the frame said 4001 or 4029: the frame is what classifies."""
        self._peer_close_code = code

    def closed(self, transport_code: int | None, *, reconfiguring: bool = False) -> Disconnect:
        """How the connection ended, from the peer's close code (else the transport's)."""
        code = self._peer_close_code if self._peer_close_code is not None else transport_code
        close_class = protocol.classify_close(code)
        reason = _CLOSE_REASONS.get(close_class, "connection closed")
        if code == MESSAGE_TOO_BIG:
            reason = (
                f"a frame was larger than openmail.webhook.max_body ({self._max_body} bytes), "
                "which also bounds WebSocket frames; raise it, or the same event is replayed and "
                "refused again"
            )
        if reconfiguring:
            reason = "reconnecting with the new configuration"
        return Disconnect(
            DisconnectKind.of(close_class), reason, code if code is not None else ABNORMAL
        )

    def _event(self, frame: protocol.ServerFrame) -> Deliver | Invalid:
        try:
            event = event_from_object(
                frame.data, frame.raw, Origin.WEBSOCKET, compact=frame.compact
            )
        except EventError as exc:
            return Invalid(InvalidReason.BAD_EVENT, str(exc))
        subscribed_at = self._subscribed_at
        # Only a subscription that carried a cursor replays anything; events kept from before
        # 'subscribed' are live.
        if subscribed_at is None or self.cursor is None:
            return Deliver(event)
        replayed = protocol.replayed(protocol.occurred_at(frame.data), subscribed_at)
        if replayed is None:
            # No readable time: counted while the first replay may still run (it comes before
            # live events), since a page left unasked for loses events and one asked for too
            # many only repeats some; past it, a stream of such events would page for ever.
            replayed = not self._live_seen and self._replayed < protocol.REPLAY_LIMIT
        elif not replayed:
            self._live_seen = True
        if not replayed:
            return Deliver(event)
        self._replayed += 1
        if self._replayed % protocol.REPLAY_LIMIT:
            return Deliver(event)
        return Deliver(
            event,
            next_page=protocol.subscribe_frame(self._inbox_ids, self._event_types, event.event_id),
            replay_limit=self._replayed == protocol.REPLAY_LIMIT,
        )


# --- across connections --------------------------------------------------------------------------


class DownLog(enum.Enum):
    """How a failed connection is logged: once when something changes, quietly after; never an
    ERROR per retry."""

    REJECTED = "rejected"
    """ERROR ``ws.rejected``, with a hint: a new cause that no retry mends."""
    STILL_REJECTED = "still_rejected"
    """WARNING ``ws.retrying``: the same rejection again."""
    DISCONNECTED = "disconnected"
    """WARNING ``ws.disconnected``: the connection had been up, or the cause is new."""
    RETRYING = "retrying"
    """INFO ``ws.retrying``: the same passing failure again."""


@dataclass(slots=True, kw_only=True)
class Health:
    """The source's standing across connections, as ``/status`` shows it. Times are passed in."""

    since: float
    state: ConnectionState = ConnectionState.IDLE
    down_kind: DisconnectKind | None = None
    down_reason: str | None = None
    """Why the source is not subscribed; None while it is, or after a long connection ended."""
    attempts: int = 0
    last_event_at: float | None = None
    possible_gaps: int = 0

    def enter(self, state: ConnectionState, now: float) -> None:
        if state is not self.state:
            self.state, self.since = state, now

    def went_down(self, cause: Disconnect, now: float) -> DownLog:
        """A connection failed: count it, remember why, and say how to log it."""
        self.attempts += 1
        changed = (cause.kind, cause.reason) != (self.down_kind, self.down_reason)
        was_up = self.state is ConnectionState.SUBSCRIBED
        self.down_kind, self.down_reason = cause.kind, cause.reason
        paused = cause.kind is DisconnectKind.PUSHBACK
        self.enter(ConnectionState.PAUSED if paused else ConnectionState.DOWN, now)
        if cause.kind.rejected:
            return DownLog.REJECTED if changed else DownLog.STILL_REJECTED
        return DownLog.DISCONNECTED if was_up or changed else DownLog.RETRYING

    def came_up(self, now: float) -> bool:
        """Subscribed. True when this ends a failure (``recovered`` in ``ws.connected``)."""
        recovered = (self.down_kind, self.down_reason) != (None, None)
        self.down_kind = self.down_reason = None
        self.enter(ConnectionState.SUBSCRIBED, now)
        return recovered

    def ended(self, now: float) -> None:
        """A long-lived connection ended: down, but no failure to report on the way back."""
        self.down_kind = self.down_reason = None
        self.enter(ConnectionState.DOWN, now)

    def status(self, cursor: str | None) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since,
            "reason": self.down_reason,
            "cursor": cursor,
            "last_event_at": self.last_event_at,
            "reconnect_attempts": self.attempts,
            "possible_gaps": self.possible_gaps,
        }


def connection_identity(config: OpenMailConfig) -> tuple[object, ...]:
    """What a connection was opened with: a change to any of it needs a new connection."""
    ws = config.websocket
    return (config.api_key, ws.url, ws.inbox_ids, ws.event_types)
