"""NATS source: pulls from a durable JetStream consumer, turns each message into the event an edge
bridge published (same event id, payload bytes and origin), and acks it only once the spool has
durably committed it or recognised it as a duplicate or conflict.

A store failure or a full spool stops fetching and leaves what was fetched un-acked: JetStream
redelivers it after ``ack_wait``. A poison message (no event id, a body that is not a JSON object,
JSON the strict parser refuses) is terminated (``AckTerm``), logged (throttled) and counted, never
stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Final

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo

from bridge import protocol
from bridge.config import NatsConfig, NatsConsumeConfig
from bridge.errors import EventError, MissingEventIdError, StoreError
from bridge.events import Event, Origin, parse_event
from bridge.metrics import Metrics
from bridge.nats.connection import NatsConnection
from bridge.sinks.http import SOURCE_HEADER
from bridge.sources import Spool
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.sources.nats")

VIA: Final = "nats"
"""``Event.via`` of what this source hands over: counted as ``source="nats"``, and never moving
the WebSocket replay cursor whatever the origin an edge received it by."""
FETCH_WAIT: Final = 1.0
"""Seconds one pull waits for messages: how quickly a stop or an outage is noticed."""
_ORIGINS: Final = {origin.value: origin for origin in Origin}


def consumer_config(consume: NatsConsumeConfig) -> ConsumerConfig:
    filters = list(consume.filter_subjects)
    return ConsumerConfig(
        durable_name=consume.consumer,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=consume.ack_wait,
        max_ack_pending=consume.max_ack_pending,
        filter_subject=filters[0] if len(filters) == 1 else None,
        filter_subjects=filters if len(filters) > 1 else None,
    )


def consumer_differences(wanted: ConsumerConfig, found: ConsumerConfig) -> dict[str, object]:
    """What of ``wanted`` (:func:`consumer_config`) an existing consumer's ``found`` config does
    not hold: ``{key: {"server": found, "config": wanted}}``; empty when it holds all of it."""

    def filters(config: ConsumerConfig) -> list[str]:
        return sorted(
            config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])
        )

    pairs = {
        "filter_subjects": (filters(found), filters(wanted)),
        "ack_wait": (found.ack_wait, wanted.ack_wait),
        "max_ack_pending": (found.max_ack_pending, wanted.max_ack_pending),
    }
    return {
        key: {"server": have, "config": want} for key, (have, want) in pairs.items() if have != want
    }


def event_of(msg: Msg) -> Event:
    """The event an edge published as ``msg``: its bytes unchanged, its id from the body (else
    the ``X-Event-Id`` header the sink sent), its origin from ``X-OpenMail-Bridge-Source``
    (webhook when absent: a publisher other than a bridge promises no order).

    Raises:
        EventError: a poison message (``MissingEventIdError`` when it has no event id).
    """
    headers = msg.headers or {}
    origin = _ORIGINS.get(headers.get(SOURCE_HEADER, ""), Origin.WEBHOOK)
    fallback = headers.get(protocol.EVENT_ID_HEADER) or None
    # require_type=False: an edge accepted a verified webhook whatever its shape, so must we.
    event = parse_event(msg.data, origin, fallback_event_id=fallback, require_type=False)
    return dataclasses.replace(event, via=VIA)


class NatsSource:
    """The consumer loop over the shared connection.

    Args:
        config: the ``nats:`` section; ``consume`` must be set.
        connection: the bridge's NATS connection (started and stopped by its owner).
        metrics: where consumed, terminated and consumer state are counted.
        fetch_wait: seconds one pull waits (tests shorten it).
        retry_wait: seconds between attempts to set the consumer up again after a failure.
    """

    name = "nats"

    def __init__(
        self,
        config: NatsConfig,
        connection: NatsConnection,
        metrics: Metrics,
        *,
        fetch_wait: float = FETCH_WAIT,
        retry_wait: float = 1.0,
    ) -> None:
        if config.consume is None:
            raise ValueError("nats.consume is not set")
        self.config = config
        self.consume = config.consume
        self.connection = connection
        self.metrics = metrics
        self._fetch_wait = fetch_wait
        self._retry_wait = retry_wait
        self._failed_log = Throttle()  # one line a minute while consuming keeps failing
        self._spool: Spool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._subscribed = False
        self._poison_log = Throttle()
        self._refused_log = Throttle()
        self.acked = 0
        self.terminated = 0
        self.unacked = 0
        self.last_error: str | None = None
        self.consumer_info: ConsumerInfo | None = None

    # --- Source ----------------------------------------------------------------------------

    async def start(self, spool: Spool) -> None:
        self._spool = spool
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nats:consume")

    async def stop(self) -> None:
        self._stopping = True
        self._subscribed = False
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def receiving(self) -> bool:
        return self._subscribed and self.connection.connected and not self._stopping

    def status(self) -> dict[str, object]:
        info = self.consumer_info
        return {
            "state": "consuming" if self.receiving else self.connection.state.value,
            "stream": self.config.stream.name,
            "consumer": self.consume.consumer,
            "acked": self.acked,
            "terminated": self.terminated,
            "unacked": self.unacked,
            "pending": info.num_pending if info is not None else None,
            "ack_pending": info.num_ack_pending if info is not None else None,
            "redelivered": info.num_redelivered if info is not None else None,
            "last_error": self.last_error,
        }

    async def refresh(self) -> None:
        """Read the consumer's state (pending, redelivered) for ``/status`` and ``/metrics``."""
        js = self.connection.jetstream()
        if js is None:
            return
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            self.consumer_info = await js.consumer_info(
                self.config.stream.name, self.consume.consumer, timeout=2.0
            )
        info = self.consumer_info
        if info is not None:
            self.metrics.nats_consumer_pending.set(info.num_pending or 0)
            self.metrics.nats_consumer_ack_pending.set(info.num_ack_pending or 0)
            self.metrics.nats_consumer_redelivered.set(info.num_redelivered or 0)

    # --- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            js = await self.connection.wait_connected()
            subscription = None
            try:
                subscription = await self._subscribe(js)
                self._subscribed = True
                await self._consume(subscription)
            except (nats.errors.Error, TimeoutError, OSError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                if (extra := self._failed_log.admit_fields("failed_since_last_line")) is not None:
                    log.warning(
                        "nats.consume_failed",
                        consumer=self.consume.consumer,
                        error=self.last_error,
                        retry_in=self._retry_wait,
                        **extra,
                    )
            except Exception:
                # A bug must not end consuming for the life of the process: what was fetched
                # and not acked is redelivered after ack_wait.
                log.exception("nats.consume_error", consumer=self.consume.consumer)
            self._subscribed = False
            if subscription is not None:
                with contextlib.suppress(Exception):  # the connection may be gone with it
                    await subscription.unsubscribe()
            await asyncio.sleep(self._retry_wait)

    async def _subscribe(self, js: JetStreamContext) -> JetStreamContext.PullSubscription:
        """Bind to the durable consumer, creating it if missing."""
        stream, durable = self.config.stream.name, self.consume.consumer
        wanted = consumer_config(self.consume)
        try:
            self.consumer_info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            self.consumer_info = await js.add_consumer(stream, wanted)
            log.info("nats.consumer_created", stream=stream, consumer=durable)
        else:
            # An existing durable consumer is the server's: used as it is, never changed under
            # other sidecars sharing it. A config that says otherwise is warned of at each bind.
            if differs := consumer_differences(wanted, self.consumer_info.config):
                log.warning(
                    "nats.consumer_differs",
                    stream=stream,
                    consumer=durable,
                    differs=differs,
                    hint="the consumer is used as the server has it: change it with "
                    "`nats consumer edit`, or name a new consumer in nats.consume.consumer",
                )
        return await js.pull_subscribe_bind(durable, stream=stream)

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        spool = self._spool
        assert spool is not None  # set by start()
        while not self._stopping:
            # A full or unwritable spool stops fetching: what JetStream holds stays there.
            await spool.wait_room()
            try:
                messages = await subscription.fetch(self.consume.batch, timeout=self._fetch_wait)
            except nats.errors.TimeoutError:
                if not self.connection.connected:
                    raise nats.errors.ConnectionClosedError from None
                continue
            await self._handle(spool, messages)

    async def _handle(self, spool: Spool, messages: Sequence[Msg]) -> None:
        events: list[Event] = []
        kept: list[Msg] = []
        for msg in messages:
            try:
                events.append(event_of(msg))
            except EventError as exc:
                await self._terminate(msg, exc)
                continue
            kept.append(msg)
        if not events:
            return
        try:
            results = await spool.accept(events)
        except StoreError as exc:
            self._leave(kept, str(exc))
            return
        for msg, result in zip(kept, results, strict=True):
            if isinstance(result, StoreError):
                self._leave([msg], str(result))
                continue
            # Acked only now: the event is committed, or recognised as one that was.
            await msg.ack()
            self.acked += 1
            self.metrics.nats_consumed.labels("acked").inc()

    def _leave(self, messages: Sequence[Msg], error: str) -> None:
        """Not stored: left un-acked, so JetStream redelivers them after ``ack_wait``."""
        self.unacked += len(messages)
        self.last_error = error
        self.metrics.nats_consumed.labels("unacked").inc(len(messages))
        suppressed = self._refused_log.admit()
        if suppressed is not None:
            log.warning(
                "nats.not_stored",
                count=len(messages),
                error=error,
                suppressed=suppressed,
                hint="left un-acked; JetStream redelivers them after ack_wait",
            )

    async def _terminate(self, msg: Msg, exc: EventError) -> None:
        reason = "no_event_id" if isinstance(exc, MissingEventIdError) else "invalid_payload"
        with contextlib.suppress(nats.errors.Error):
            await msg.term()
        self.terminated += 1
        self.metrics.nats_poison.labels(reason).inc()
        self.metrics.nats_consumed.labels("terminated").inc()
        suppressed = self._poison_log.admit()
        if suppressed is not None:
            log.warning(
                "nats.message_terminated",
                reason=reason,
                detail=str(exc),
                subject=msg.subject,
                suppressed=suppressed,
            )
