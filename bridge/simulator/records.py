"""What the simulator writes down: every delivery attempt (:class:`DeliveryRecord`), every
connection it turned away (:class:`Rejection`), every attachment request
(:class:`AttachmentRequest`); and the bytes both channels deliver: the compact JSON of an event
stamped with its attempt (§6).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Final, Literal

from bridge.simulator.mail import iso_now

Channel = Literal["websocket", "webhook", "failed"]
RejectionTrigger = Literal["upgrade", "first_frame", "silence"]
"""What set off a rejection: the upgrade itself (HTTP status), the client's first frame, or the
client's silence for ``reject_silence`` seconds (a close code)."""
_DELIVERY_FIELDS: Final = ("delivered_at", "attempt")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRecord:
    """One delivery attempt, or the final verdict ``channel="failed"``.

    ``failed`` records carry the number of webhook attempts made (0 when the event had no route) and
    the last status/error. ``replay`` marks WebSocket frames sent in answer to ``last_event_id``;
    ``url`` is the webhook the attempt went to.
    """

    event_id: str
    channel: Channel
    attempt: int
    status: int | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)
    connection_id: int | None = None
    replay: bool = False
    url: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A WebSocket connection turned away: ``code`` is the close code, or the HTTP status when
    ``trigger`` is ``upgrade``."""

    reason: Literal["unauthorized", "connection_limit"]
    code: int
    trigger: RejectionTrigger
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentRequest:
    """One request for attachment bytes. ``path`` is as sent (percent-encoded, no query);
    ``authorization`` says whether an ``Authorization`` header came with it (its value is never
    kept); ``status`` is the answer, None for a request held open (``hang``)."""

    path: str
    authorization: bool
    status: int | None
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def encode(event: dict[str, object]) -> str:
    """The compact JSON both channels send."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def stamp(event: dict[str, object], attempt: int) -> dict[str, object]:
    """A copy of ``event`` with this delivery's ``delivered_at`` and ``attempt``, in §6's order."""
    head = {key: event[key] for key in ("event", "event_id", "occurred_at") if key in event}
    rest = {k: v for k, v in event.items() if k not in head and k not in _DELIVERY_FIELDS}
    return {**head, "delivered_at": iso_now(), "attempt": attempt, **rest}
