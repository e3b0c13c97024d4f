"""Test events: what ``openmail-bridge trigger`` asks a running bridge for, like OpenMail's "Test
webhook" button. A realistic ``message.received`` (``event_id`` ``evt_test_<uuid>``) goes straight
to one named sink, the routes not asked, through the spool like any other event (durable, retried,
dead-lettered by that sink's rules), counted under source ``test``; then the outcome of that one
delivery can be asked for until it is delivered or dead.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Final, Protocol

from bridge.dispatcher import Dispatcher
from bridge.errors import StoreError
from bridge.events import Event, Origin, parse_event
from bridge.pipeline import Pipeline
from bridge.store import AcceptOutcome, Delivery, Store

VIA: Final = "test"
"""``Event.via`` of a test event: metrics and the ``stats`` line count it as ``source="test"``,
and it never moves the WebSocket cursor."""
EVENT_ID_PREFIX: Final = "evt_test_"
INBOX_ID: Final = "inb_test"
KEPT: Final = 100
"""Test deliveries remembered for their outcome, newest kept: an operator waits for one at a time,
and a restart forgets them all (the events themselves are in the spool)."""


def _iso(at: float) -> str:
    """``at`` as OpenMail writes times: ISO-8601 UTC with milliseconds and ``Z``."""
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def payload(event_id: str, at: float) -> bytes:
    """A ``message.received`` in the documented shape (protocol notes, section 6) sent ``at``."""
    tag = event_id.removeprefix(EVENT_ID_PREFIX)
    stamp = _iso(at)
    body = {
        "event": "message.received",
        "event_id": event_id,
        "occurred_at": stamp,
        "delivered_at": stamp,
        "attempt": 1,
        "inbox_id": INBOX_ID,
        "thread_id": f"thr_test_{tag}",
        "message": {
            "id": f"msg_test_{tag}",
            "rfc_message_id": f"<{tag}@test.openmail-bridge.invalid>",
            "from": "OpenMail Bridge <bridge-test@example.com>",
            "to": "test@openmail.sh",
            "cc": [],
            "subject": "Test event from openmail-bridge",
            "body_text": "This is a test event sent by 'openmail-bridge trigger' to check that "
            "this endpoint receives and verifies the bridge's deliveries. It was not sent by "
            "OpenMail and no one wrote it; nothing needs to be answered.",
            "attachments": [],
            "received_at": stamp,
        },
    }
    return json.dumps(body, separators=(",", ":")).encode()


def new_event(at: float | None = None) -> Event:
    """A new test event with a fresh ``evt_test_<uuid>`` id, received ``at`` (now by default)."""
    at = time.time() if at is None else at
    event_id = f"{EVENT_ID_PREFIX}{uuid.uuid4().hex}"
    # origin webhook: sinks send it as OpenMail's webhook would have.
    event = parse_event(payload(event_id, at), Origin.WEBHOOK, received_at=at)
    return dataclasses.replace(event, via=VIA)


class Refusal(enum.StrEnum):
    """Why a test event was not sent."""

    UNKNOWN_SINK = "unknown_sink"
    STOPPING = "stopping"
    NOT_STORED = "not_stored"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    reason: Refusal
    message: str
    sinks: tuple[str, ...]
    """The sinks this bridge runs, which a test event can be sent to."""


class DeliveryState(enum.StrEnum):
    """Where one test delivery is: ``pending`` until delivered or dead."""

    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One test delivery as it stands. ``attempts`` and ``error`` are the last failed attempt's
    (none when delivered: the row is gone once it is)."""

    event_id: str
    sink: str
    state: DeliveryState
    attempts: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class Bridge(Protocol):
    """What a trigger needs of a running bridge (the supervisor)."""

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def stopping(self) -> bool: ...


class Trigger:
    """Sends test events into a bridge and reports on their deliveries.

    Args:
        bridge: the running bridge; asked for its parts only when a test event is sent.
    """

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._sent: OrderedDict[str, Delivery] = OrderedDict()

    async def send(self, sink: str) -> Delivery | Refused:
        """Commit a new test event for ``sink`` alone; its delivery row, or why it was not sent."""
        sinks = tuple(self._bridge.dispatcher.workers)
        if sink not in sinks:
            return Refused(
                reason=Refusal.UNKNOWN_SINK, message=f"no sink named {sink!r}", sinks=sinks
            )
        if self._bridge.stopping:
            return Refused(reason=Refusal.STOPPING, message="the bridge is stopping", sinks=sinks)
        event = new_event()
        (result,) = await self._bridge.pipeline.accept_to(event, (sink,))
        if isinstance(result, StoreError):
            return Refused(reason=Refusal.NOT_STORED, message=str(result), sinks=sinks)
        # A fresh uuid is never a duplicate or a conflict; if it were, nothing would be sent.
        if result.outcome is not AcceptOutcome.ACCEPTED or not result.deliveries:
            return Refused(
                reason=Refusal.NOT_STORED,
                message=f"the spool answered {result.outcome}",
                sinks=sinks,
            )
        (delivery,) = result.deliveries
        self._sent[event.event_id] = delivery
        while len(self._sent) > KEPT:
            self._sent.popitem(last=False)
        return delivery

    async def outcome(self, event_id: str) -> Outcome | None:
        """Where the test delivery of ``event_id`` stands; None for an id this bridge did not send
        since it started.

        Raises:
            StoreError: the state database cannot be read.
        """
        delivery = self._sent.get(event_id)
        if delivery is None:
            return None
        store = self._bridge.pipeline.store
        pending = await _pending(store, delivery)
        if pending is None:
            dead = await store.dlq_list(sink=delivery.sink, event_id=event_id)
            if dead:
                row = dead[0].delivery
                return _outcome(delivery, DeliveryState.DEAD, row.attempts, dead[0].error)
            # Read again: a dead letter redriven (``dlq retry``) between the two reads was in
            # neither, and is pending, not delivered.
            pending = await _pending(store, delivery)
        if pending is not None:
            return _outcome(delivery, DeliveryState.PENDING, pending.attempts, pending.last_error)
        return _outcome(delivery, DeliveryState.DELIVERED, 0, None)


async def _pending(store: Store, delivery: Delivery) -> Delivery | None:
    """``delivery``'s row while it is pending: the sink's first pending row from its seq on."""
    rows = await store.pending(delivery.sink, after_seq=delivery.seq - 1, limit=1)
    return rows[0] if rows and rows[0].id == delivery.id else None


def _outcome(delivery: Delivery, state: DeliveryState, attempts: int, error: str | None) -> Outcome:
    return Outcome(
        event_id=delivery.event_id, sink=delivery.sink, state=state, attempts=attempts, error=error
    )
