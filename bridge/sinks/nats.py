"""NATS sink: publishes each event's original payload bytes to JetStream, de-duplicated by the
stream on ``Nats-Msg-Id``, and counts a delivery done only once JetStream's PubAck arrives.

Several edge bridges may publish the same event: the stream keeps it once within its duplicate
window, and answers the later copies with a PubAck marked duplicate, which is done too. With
``ordering: thread`` the worker publishes a thread's next event only after the previous one's
PubAck, which is what keeps a thread's order in the stream across edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import nats.errors
import nats.js.errors

from bridge import protocol
from bridge.config.schema import SinkConfig
from bridge.config.values import Duration
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError
from bridge.metrics import Metrics
from bridge.nats import subjects
from bridge.nats.connection import NatsConnection
from bridge.nats.stream import StreamKeeper, StreamState
from bridge.sinks.http import SOURCE_HEADER

if TYPE_CHECKING:
    from bridge.store import Delivery

MSG_ID_HEADER: Final = "Nats-Msg-Id"
"""JetStream de-duplicates on this header within the stream's duplicate window."""
_HEADER_VALUE: Final = re.compile(r"[!-~]+")
"""Visible ASCII: an event id that is safe in a header line as it is."""


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
            PermanentDeliveryError: an event id unfit for a header.
        """
        connection, stream = self._connection, self._stream
        if connection is None or stream is None:
            raise RuntimeError(f"sink {self.name!r} is not started")
        if not _HEADER_VALUE.fullmatch(delivery.event_id):
            raise PermanentDeliveryError(
                f"event id {delivery.event_id!r} cannot be sent in a header"
            )
        js = connection.jetstream()
        if js is None:
            self._count("failed")
            raise RetryableDeliveryError(connection.describe_failure())
        if stream.state is StreamState.INVALID and stream.problem:
            self._count("failed")
            raise RetryableDeliveryError(stream.problem)
        subject = self.subject_for(delivery)
        headers = {
            MSG_ID_HEADER: delivery.event_id,
            protocol.EVENT_ID_HEADER: delivery.event_id,
            SOURCE_HEADER: delivery.origin.value,
            "Content-Type": "application/json",
        }
        try:
            ack = await js.publish(
                subject,
                delivery.payload,
                timeout=self.options.timeout,
                stream=stream.config.name,
                headers=headers,
            )
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            self._count("failed")
            raise RetryableDeliveryError(self._failure(subject, exc, connection)) from exc
        self.counts.last_seq = ack.seq
        self._count("duplicate" if ack.duplicate else "acked")

    def _failure(self, subject: str, exc: Exception, connection: NatsConnection) -> str:
        """The one place a failed publish is put into words; every failure is retryable."""
        if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
            return f"no PubAck for {subject} within {self.options.timeout:g}s"
        if isinstance(exc, nats.js.errors.NoStreamResponseError):
            return f"no JetStream stream answers on {subject}"
        if isinstance(exc, nats.js.errors.APIError):
            return f"JetStream refused the publish to {subject}: {exc.description or exc}"
        return f"{connection.describe_failure()}: {str(exc) or type(exc).__name__}"

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
