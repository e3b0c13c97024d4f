"""NATS sink: publishes each event's original payload bytes to JetStream, de-duplicated by the
stream on ``Nats-Msg-Id``, and counts a delivery done only once JetStream's PubAck arrives.

Several edge bridges may publish the same event: the stream keeps it once within its duplicate
window, and answers the later copies with a PubAck marked duplicate, which is done too. With
``ordering: thread`` the worker publishes a thread's next event only after the previous one's
PubAck, which is what keeps a thread's order in the stream across edges.

A failure that retrying cannot change is permanent for that event alone, which is then
dead-lettered and stops holding its thread: an event larger than the server takes in one message
(or than the stream's ``max_msg_size``), a subject the server denies this NATS user.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import nats.errors
import nats.js.errors
from nats.js.api import Header

from bridge import protocol
from bridge.config.schema import SinkConfig
from bridge.config.values import Duration
from bridge.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from bridge.metrics import Metrics
from bridge.nats import subjects
from bridge.nats.connection import NatsConnection
from bridge.nats.denials import PublishDenied
from bridge.nats.stream import StreamKeeper, StreamState
from bridge.nats.wake import publish_wake
from bridge.sinks.http import SOURCE_HEADER

if TYPE_CHECKING:
    from bridge.store import Delivery

MSG_ID_HEADER: Final = "Nats-Msg-Id"
"""JetStream de-duplicates on this header within the stream's duplicate window."""
_HEADER_VALUE: Final = re.compile(r"[!-~]+")
"""Visible ASCII: an event id that is safe in a header line as it is."""
MESSAGE_TOO_LARGE: Final = 10054
"""JetStream's error code for a message over the stream's ``max_msg_size``."""


def wire_size(payload: bytes, headers: Mapping[str, str]) -> int:
    """The bytes a server counts against its ``max_payload``: the header block and the payload.
    nats-py checks the payload alone, and the server closes the connection on a message over the
    limit, so the sink checks the sum before publishing."""
    block = len(b"NATS/1.0\r\n\r\n")
    block += sum(len(k.encode()) + len(v.encode()) + len(b": \r\n") for k, v in headers.items())
    return block + len(payload)


def too_large(delivery: Delivery, size: int, connection: NatsConnection) -> str:
    limit = connection.max_payload
    over = f"the max_payload of {limit} bytes" if limit is not None else "the max_payload"
    return (
        f"event is {len(delivery.payload)} bytes ({size} with its NATS headers), over {over} "
        f"of NATS server {connection.server}: it can never be published there"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsSinkOptions:
    subject: str = subjects.DEFAULT_TEMPLATE
    """Fields: {inbox_id}, {event}, {thread_id}, {source}; each rendered as one safe token."""
    timeout: Duration = 5.0
    """How long to wait for the PubAck before the attempt counts as failed (and is retried)."""

    def __post_init__(self) -> None:
        # Checked here so that `openmail-bridge check` reports it with its key path.
        try:
            subjects.validate_template(self.subject)
        except ValueError as exc:
            raise ValueError(f"subject: {exc}") from None
        if self.timeout <= 0:
            raise ValueError("timeout: must be more than 0s")

    def subject_filter(self) -> str:
        """The subject filter covering everything this sink publishes (``NatsPublishing``)."""
        return subjects.filter_of(self.subject)


@dataclass(slots=True)
class PublishCounts:
    """What ``/status`` shows of a NATS sink's publishes."""

    acked: int = 0
    duplicate: int = 0
    failed: int = 0
    last_seq: int | None = None


class NatsSink:
    """Publishes to JetStream over the bridge's shared NATS connection.

    Args:
        config: the sink's config, with its :class:`NatsSinkOptions`.

    The supervisor hands it the connection, the stream keeper and the metrics with :meth:`bind`
    before :meth:`start`; the registry builds sinks from their config alone.
    """

    def __init__(self, config: SinkConfig[NatsSinkOptions]) -> None:
        self.name = config.name
        self.options = config.options
        self.counts = PublishCounts()
        self._connection: NatsConnection | None = None
        self._stream: StreamKeeper | None = None
        self._metrics: Metrics | None = None

    def bind(self, connection: NatsConnection, stream: StreamKeeper, metrics: Metrics) -> None:
        self._connection, self._stream, self._metrics = connection, stream, metrics

    async def start(self) -> None:
        if self._connection is None:
            raise RuntimeError(f"sink {self.name!r} has no NATS connection (bind it first)")

    async def reopen(self) -> None:
        pass

    async def close(self) -> None:
        """The connection is shared: the supervisor closes it after every sink and source."""

    def subject_for(self, delivery: Delivery) -> str:
        return subjects.render(
            self.options.subject,
            {
                "inbox_id": delivery.inbox_id,
                "event": delivery.type,
                "thread_id": delivery.thread_id,
                "source": delivery.origin.value,
            },
        )

    async def send(self, delivery: Delivery) -> None:
        """Publish the event; returns once JetStream acknowledged it (a duplicate included).

        Raises:
            RetryableDeliveryError: not connected, no PubAck in time, no stream on the subject,
                the stream not usable.
            PermanentDeliveryError: an event id unfit for a header, an event larger than the
                server or the stream takes, a subject this NATS user may not publish to.
        """
        connection, stream = self._connection, self._stream
        if connection is None or stream is None:
            raise RuntimeError(f"sink {self.name!r} is not started")
        if not _HEADER_VALUE.fullmatch(delivery.event_id):
            raise PermanentDeliveryError(
                f"event id {delivery.event_id!r} cannot be sent in a header"
            )
        # Any retryable failure is retried at once when NATS connects again (the stream is
        # checked again then too), or when the stream is found usable again, not only when its
        # backoff ends.
        wake = publish_wake(connection, stream)
        js = connection.jetstream()
        if js is None:
            self._count("failed")
            raise RetryableDeliveryError(connection.describe_failure(), wake=wake)
        if stream.state is StreamState.INVALID and stream.problem:
            self._count("failed")
            stream.suspect()  # it may have been fixed since it was checked
            raise RetryableDeliveryError(stream.problem, wake=wake)
        subject = self.subject_for(delivery)
        headers = {
            MSG_ID_HEADER: delivery.event_id,
            protocol.EVENT_ID_HEADER: delivery.event_id,
            SOURCE_HEADER: delivery.origin.value,
            "Content-Type": "application/json",
        }
        # js.publish adds this one to the headers it is given.
        size = wire_size(delivery.payload, {**headers, Header.EXPECTED_STREAM: stream.config.name})
        limit = connection.max_payload
        if limit is not None and size > limit:
            self._count("failed")
            raise PermanentDeliveryError(too_large(delivery, size, connection))
        try:
            ack = await connection.denials.guard(
                subject,
                js.publish(
                    subject,
                    delivery.payload,
                    timeout=self.options.timeout,
                    stream=stream.config.name,
                    headers=headers,
                ),
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            if not _racing(exc):
                self._count("failed")
            error = self._classify(delivery, subject, size, exc, connection)
            if isinstance(error, RetryableDeliveryError):
                error.wake = wake
            raise error from exc
        self.counts.last_seq = ack.seq
        self._count("duplicate" if ack.duplicate else "acked")

    def _classify(
        self,
        delivery: Delivery,
        subject: str,
        size: int,
        exc: Exception,
        connection: NatsConnection,
    ) -> DeliveryError:
        """The one place a failed publish is put into words and classified: what no retry can
        change is permanent, the rest (time, a connection, a stream) is retryable."""
        if isinstance(exc, PublishDenied):
            return PermanentDeliveryError(
                f"the NATS server denies this user publishing to {subject} (permissions "
                "violation): grant the user that subject, or route the event elsewhere"
            )
        if isinstance(exc, nats.errors.MaxPayloadError):  # a limit lowered since the check
            return PermanentDeliveryError(too_large(delivery, size, connection))
        if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
            return RetryableDeliveryError(
                f"no PubAck for {subject} within {self.options.timeout:g}s"
            )
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            # The stream was deleted, or its subjects changed: checked again (and created again
            # where this user may), which wakes this delivery's retry when it is usable.
            if self._stream is not None:
                self._stream.suspect()
            return RetryableDeliveryError(f"no JetStream stream answers on {subject}")
        if _racing(exc):
            return RetryableDeliveryError(
                f"another publisher's copy of this event is being stored in the stream "
                f"({subject}: duplicate message id in process); the retry finds it stored"
            )
        if isinstance(exc, nats.js.errors.APIError):
            refused = f"JetStream refused the publish to {subject}: {exc.description or exc}"
            if exc.err_code == MESSAGE_TOO_LARGE:
                return PermanentDeliveryError(
                    f"{refused} (event is {len(delivery.payload)} bytes, over the stream's "
                    "max_msg_size)"
                )
            if self._stream is not None:  # its limits, its subjects or the stream changed
                self._stream.suspect()
            return RetryableDeliveryError(refused)
        return RetryableDeliveryError(
            f"{connection.describe_failure()}: {str(exc) or type(exc).__name__}"
        )

    def _count(self, outcome: str) -> None:
        setattr(self.counts, outcome, getattr(self.counts, outcome) + 1)
        if self._metrics is not None:
            self._metrics.nats_publishes.labels(self.name, outcome).inc()

    def status(self) -> dict[str, object]:
        return {
            "subject": self.options.subject,
            "acked": self.counts.acked,
            "duplicate": self.counts.duplicate,
            "failed": self.counts.failed,
            "last_seq": self.counts.last_seq,
        }


def _racing(exc: BaseException) -> bool:
    """JetStream's answer to a publish whose Nats-Msg-Id another publisher's copy holds while
    that one is being stored (two edges with the same event, a clustered stream): no failure of
    this bridge, and the retry is answered as a duplicate."""
    description = getattr(exc, "description", None)
    return (
        isinstance(exc, nats.js.errors.APIError)
        and isinstance(description, str)
        and "duplicate message id is in process" in description.lower()
    )
