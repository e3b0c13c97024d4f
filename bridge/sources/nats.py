"""NATS source: pulls from a durable JetStream consumer, turns each message into the event an edge
bridge published (same event id, payload bytes and origin), and acks it only once the spool has
durably committed it or recognised it as a duplicate or conflict.

Only a consumer that keeps every message until it is acked is consumed from (explicit acks,
unlimited deliveries, pulled: :mod:`bridge.sources.nats_consumer`); another is reported and checked
again with backoff. What the spool has no room for, or a store failure refused, is held in stream
order and stored before anything newer is fetched (:mod:`bridge.sources.nats_held`). A poison
message (no event id, a body that is not a JSON object, JSON the strict parser refuses) is
terminated (``AckTerm``), logged (throttled) and counted, never stored.

Stream order also holds across processes: at a bind, deliveries an earlier process never settled
are awaited before anything newer is stored (:mod:`bridge.sources.nats_redelivery`), and a stop
in the middle of a pull keeps what the pull received, to nak it. Messages the stream removed
before they were fetched are counted and logged (:mod:`bridge.sources.nats_gap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from enum import StrEnum
from typing import Final

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from bridge import protocol
from bridge.backoff import Uniform, full_jitter
from bridge.config import NatsConfig
from bridge.errors import EventError, MissingEventIdError, StoreError
from bridge.events import Event, Origin, parse_event
from bridge.metrics import Metrics
from bridge.nats.connection import NatsConnection
from bridge.sinks.http import SOURCE_HEADER
from bridge.sources import Spool
from bridge.sources.nats_consumer import (
    DIFFERS_HINT,
    consumer_config,
    consumer_differences,
    consumer_problems,
    describe_problems,
    fix_hint,
)
from bridge.sources.nats_delivery import Delivery
from bridge.sources.nats_gap import SkippedMessages
from bridge.sources.nats_held import Held, HeldMessages, Sleep
from bridge.sources.nats_redelivery import RedeliveryGate
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.sources.nats")

VIA: Final = "nats"
"""``Event.via`` of what this source hands over: counted as ``source="nats"``, and never moving
the WebSocket replay cursor whatever the origin an edge received it by."""
FETCH_WAIT: Final = 1.0
"""Seconds one pull waits for messages: how quickly a stop or an outage is noticed."""
PULL_MARGIN: Final = 0.1
"""Seconds past a pull's own wait before it is surely closed on the server."""
RECHECK_MAX: Final = 60.0
"""Cap in seconds of the backoff between checks of a consumer that would lose events."""


class ConsumerState(StrEnum):
    """The source's ``state`` in ``/status`` while it is bound; else the connection's state."""

    CONSUMING = "consuming"
    AWAITING_REDELIVERY = "awaiting_redelivery"
    """Bound, and waiting for deliveries an earlier process never settled to come back first."""
    INVALID = "consumer_invalid"
    """Connected, but not consuming: the consumer would lose events."""


INVALID_STATE: Final = ConsumerState.INVALID
_ORIGINS: Final = {origin.value: origin for origin in Origin}


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
        retry_wait: seconds between attempts to set the consumer up again after a failure; the
            first step of the backoff between checks of a consumer that would lose events.
        recheck_max: the cap of that backoff.
        clock: a monotonic clock, for when JetStream last heard of held messages.
        sleep: how every wait of the loop is waited out.
        uniform: the random source of the backoff's jitter.
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
        recheck_max: float = RECHECK_MAX,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        uniform: Uniform = random.uniform,
    ) -> None:
        if config.consume is None:
            raise ValueError("nats.consume is not set")
        self.config = config
        self.consume = config.consume
        self.connection = connection
        self.metrics = metrics
        self._fetch_wait = fetch_wait
        self._retry_wait = retry_wait
        self._recheck_max = recheck_max
        self._sleep = sleep
        self._uniform = uniform
        self._failed_log = Throttle()  # one line a minute while consuming keeps failing
        self._spool: Spool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._subscribed = False
        self._poison_log = Throttle()
        self._refused_log = Throttle()
        self._held = HeldMessages(clock=clock, sleep=sleep)
        self._gate = RedeliveryGate(clock=clock)
        self._clock = clock
        self._pull_ends = 0.0  # loop time: when the last pull expires on the server
        self._pulling: JetStreamContext.PullSubscription | None = None
        self._skipped = SkippedMessages(
            config.stream.name, self.consume.consumer, metrics, sleep=sleep
        )
        self._invalid: str | None = None
        """Why the consumer would lose events, while it does; None once it is usable."""
        self._checks_failed = 0
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
        # The last pull stays open on the server until it expires when it found fewer messages
        # than its batch: a message nak'd before then goes straight back to it, is lost with
        # this connection until ack_wait, and holds the next start's gate that long. So the
        # naks wait it out (fetch_wait at most), and what it brought meanwhile is nak'd too.
        if (left := self._pull_ends - asyncio.get_running_loop().time()) > 0:
            await asyncio.sleep(left)  # the server's time, whatever clock the source was given
        if (pulling := self._pulling) is not None and pulling.pending_msgs > 0:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                # Some queued, so nats-py asks the server without a wait: answered at once.
                batch = pulling.pending_msgs + 1
                await self._take(await pulling.fetch(batch, timeout=self._fetch_wait))
        # Nak'd rather than left to ack_wait: JetStream redelivers them before anything newer,
        # so whoever consumes next stores them in stream order.
        await self._held.release(self._storable)

    @property
    def receiving(self) -> bool:
        return self._subscribed and self.connection.connected and not self._stopping

    @property
    def consumer_invalid(self) -> bool:
        """Connected, but not consuming: the consumer would lose events."""
        return self._invalid is not None and self.connection.connected

    def status(self) -> dict[str, object]:
        info = self.consumer_info
        state: str
        if self.receiving:
            awaiting = self._gate.closed
            state = ConsumerState.AWAITING_REDELIVERY if awaiting else ConsumerState.CONSUMING
        elif self.consumer_invalid:
            state = ConsumerState.INVALID
        else:
            state = self.connection.state.value
        return {
            "state": str(state),
            "stream": self.config.stream.name,
            "consumer": self.consume.consumer,
            "acked": self.acked,
            "terminated": self.terminated,
            "unacked": self.unacked,
            "held": len(self._held),
            "skipped": self._skipped.count,
            "delivered_elsewhere": self._skipped.elsewhere,
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
            delay = self._retry_wait
            try:
                subscription = await self._bind(js)
                if subscription is None:
                    delay = self._recheck_delay()
                else:
                    self._subscribed, self._pulling = True, subscription
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
                # A bug must not end consuming for the life of the process: what is held is
                # stored on the next round, what was fetched and lost is redelivered.
                log.exception("nats.consume_error", consumer=self.consume.consumer)
            self._subscribed, self._pulling = False, None
            if subscription is not None:
                with contextlib.suppress(Exception):  # the connection may be gone with it
                    await subscription.unsubscribe()
            await self._sleep(delay)

    async def _bind(self, js: JetStreamContext) -> JetStreamContext.PullSubscription | None:
        """Bind to the durable consumer, creating it if missing; None when it exists and would
        lose events (reported, and checked again after a backoff)."""
        stream, durable = self.config.stream.name, self.consume.consumer
        wanted = consumer_config(self.consume)
        try:
            self.consumer_info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            self.consumer_info = await js.add_consumer(stream, wanted)
            log.info("nats.consumer_created", stream=stream, consumer=durable)
        else:
            # An existing durable consumer is the server's: never changed by the bridge. One
            # that would drop what the spool has not stored, or hand this sidecar another part
            # of the stream, is not consumed from; one that only differs from the config in how
            # it paces deliveries is used, with a warning at each bind.
            if problems := consumer_problems(self.consumer_info.config, wanted):
                self._unusable(problems)
                return None
            if differs := consumer_differences(wanted, self.consumer_info.config):
                log.warning(
                    "nats.consumer_differs",
                    stream=stream,
                    consumer=durable,
                    differs=differs,
                    hint=DIFFERS_HINT,
                )
        if self._invalid is not None:
            log.info("nats.consumer_valid", stream=stream, consumer=durable)
            self._invalid = self.last_error = None
        self._checks_failed = 0
        self._skipped.bound_to(self.consumer_info)
        self._gate.bound(self.consumer_info, len(self._held), self._ack_wait())
        return await js.pull_subscribe_bind(durable, stream=stream)

    def _unusable(self, problems: dict[str, dict[str, object]]) -> None:
        stream, durable = self.config.stream.name, self.consume.consumer
        problem = describe_problems(stream, durable, problems)
        if problem != self._invalid:  # once per problem: the next checks find it again
            log.error(
                "nats.consumer_invalid",
                stream=stream,
                consumer=durable,
                invalid=problems,
                hint=fix_hint(stream, durable, problems),
            )
        self._invalid = self.last_error = problem

    def _recheck_delay(self) -> float:
        self._checks_failed += 1
        return full_jitter(self._checks_failed, self._retry_wait, self._recheck_max, self._uniform)

    async def _consume(self, subscription: JetStreamContext.PullSubscription) -> None:
        spool = self._spool
        assert spool is not None  # set by start()
        held, gate = self._held, self._gate
        while not self._stopping:
            if held and self._storable(held.head):
                # Nothing newer is fetched while something fetched earlier is not stored.
                await self._store_held(spool)
                continue
            if held:
                # Only first deliveries are held, behind redeliveries still awaited: fetched
                # again once those can have come back.
                wait = self._sleep(max(0.0, gate.until - self._clock()))
                await self._stalled(held.keeping(wait, self._ack_wait()))
            elif not spool.has_room_for(0):
                await self._stalled(spool.wait_room())
            try:
                messages = await self._fetch(subscription)
            except TimeoutError:
                # Nothing to fetch, as nats.errors.TimeoutError, or as the builtin one nats-py's
                # batch fetch raises when its first answer used up the wait: not a failure.
                if not self.connection.connected:
                    raise nats.errors.ConnectionClosedError from None
                self.last_error = None
                gate.fetched([])
                continue
            self.last_error = None
            await self._take(messages)

    def _storable(self, item: Held) -> bool:
        return self._gate.storable(item.delivery)

    async def _fetch(self, subscription: JetStreamContext.PullSubscription) -> list[Msg]:
        self._pull_ends = asyncio.get_running_loop().time() + self._fetch_wait + PULL_MARGIN
        fetching = asyncio.ensure_future(
            subscription.fetch(self.consume.batch, timeout=self._fetch_wait)
        )
        try:
            return await asyncio.shield(fetching)
        except asyncio.CancelledError:
            # A stop in the middle of a pull: nats-py drops what the pull received when it is
            # cancelled, and JetStream would give that again only after ack_wait, behind newer
            # messages. The pull ends within fetch_wait; what it got is held for stop() to nak.
            with contextlib.suppress(Exception):
                await self._take(await fetching)
            raise

    async def _take(self, messages: Sequence[Msg]) -> None:
        """Hold what is an event, terminate what is poison; note what the stream removed
        before these were fetched."""
        taken: list[Held] = []
        deliveries = [Delivery.of(msg) for msg in messages]
        for msg, delivery in zip(messages, deliveries, strict=True):
            try:
                taken.append(Held(msg, event_of(msg), delivery))
            except EventError as exc:
                await self._terminate(msg, exc)
        self._held.fetched(taken)
        self._gate.fetched(deliveries)
        self._skipped.delivered(deliveries)

    async def _stalled(self, wait: Awaitable[None]) -> None:
        """Nothing is fetched until ``wait`` is over: meanwhile the stream may remove what the
        consumer has not given yet."""
        await self._skipped.stalled(self.connection.jetstream(), wait)

    async def _store_held(self, spool: Spool) -> None:
        """Store the held messages the spool has room for, from the first; else hand the store
        the first alone, and wait for room for it if it is refused."""
        held = self._held
        # When none fits, the store decides (a duplicate or an event routed nowhere takes no
        # room), and a refusal counts the spool as full (readiness) until the event fits.
        handed = held.fitting(spool, self._storable) or [held.head]
        # A stop does not cut this short: an event committed and not acked would count as a
        # delivery of unknown outcome at the next start, which then waits out ack_wait for it.
        storing = asyncio.ensure_future(self._store_and_ack(spool, handed))
        try:
            refused, refusal = await asyncio.shield(storing)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await storing
            raise
        except StoreError as exc:
            await self._wait_room(spool, 0, str(exc))  # until the store writes again
            return
        if not refused:
            self.last_error = None
        elif held.head.size > spool.max_bytes:
            self._not_stored([held.head], refusal)
            # Holding it would stop the consumer for good: left un-acked, it comes back after
            # ack_wait, and is stored once state.max_bytes is raised.
            held.drop_head()
        else:
            await self._wait_room(spool, held.head.size, refusal)

    async def _store_and_ack(self, spool: Spool, handed: list[Held]) -> tuple[list[Held], str]:
        """Commit ``handed`` and ack what the store took; settle them. (refused, why)."""
        results = await spool.accept([item.event for item in handed])
        refused: list[Held] = []
        refusal = ""
        for item, result in zip(handed, results, strict=True):
            if isinstance(result, StoreError):
                refused.append(item)
                refusal = refusal or str(result)
                continue
            # Acked only now: the event is committed, or recognised as one that was. One stored
            # after a refused one (room taken meanwhile by another source) is acked too: it is
            # stored, and holding it back would only bring it again as a duplicate.
            with contextlib.suppress(nats.errors.Error):
                await item.msg.ack()
            self.acked += 1
            self.metrics.nats_consumed.labels("acked").inc()
        self._held.settle(handed, refused)
        return refused, refusal

    async def _wait_room(self, spool: Spool, size: int, error: str) -> None:
        """Nothing held is stored until the store takes ``size`` bytes again."""
        self._not_stored(self._held, error)
        await self._stalled(self._held.wait_room(spool, size, self._ack_wait()))

    def _ack_wait(self) -> float:
        info = self.consumer_info
        found = info.config.ack_wait if info is not None else None
        return found or self.consume.ack_wait

    def _not_stored(self, items: Iterable[Held], error: str) -> None:
        """Count each message once, the first time it could not be stored."""
        new = [item for item in items if not item.counted]
        self.last_error = error
        if not new:
            return
        for item in new:
            item.counted = True
        self.unacked += len(new)
        self.metrics.nats_consumed.labels("unacked").inc(len(new))
        suppressed = self._refused_log.admit()
        if suppressed is not None:
            log.warning(
                "nats.not_stored",
                count=len(new),
                error=error,
                suppressed=suppressed,
                hint="held un-acked and in stream order, reported in progress to JetStream; "
                "stored before anything newer is fetched once the spool has room",
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
