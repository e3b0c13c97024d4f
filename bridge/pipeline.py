"""The accept stage: route events, persist them with their outbox rows, hand the rows to delivery.

:class:`Pipeline` is the :class:`bridge.sources.Spool` every source is given. Its answer for a batch
comes once the batch is durably committed (each event stored, recognised as a duplicate, or
quarantined as a conflict), which is what lets the webhook answer 200 and the WebSocket cursor move.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import structlog

from bridge.activity import ActivityFeed
from bridge.errors import StoreError
from bridge.events import Event
from bridge.gate import Gate
from bridge.metrics import Metrics
from bridge.plan import Action, Note, Plan, Reason
from bridge.routing import UNROUTED_HINTS, Miss, Router
from bridge.sources import AcceptResults
from bridge.store import AcceptOutcome, AcceptResult, Store

if TYPE_CHECKING:
    from bridge.dispatcher import Dispatcher

log = structlog.get_logger("bridge.pipeline")

UNROUTED_REMEMBERED = 1000
"""(inbox, reason) pairs whose unrouted event was logged, kept at most."""
GATE_FAILED = Plan(sinks=(), notes=(Note("(gate)", Reason.GATE_ERROR, Action.DROPPED),))
"""The plan of an event the gate failed on: recorded with its note (so kept in the history), sent
nowhere."""

_AnswerT = TypeVar("_AnswerT")


def _outcome(result: AcceptResult) -> AcceptOutcome:
    return result.outcome


def _result(result: AcceptResult) -> AcceptResult:
    return result


class Pipeline:
    """Normalized events in, durable outbox rows out. The router is swapped on reload; what
    becomes of each event is published to ``activity``."""

    def __init__(
        self,
        store: Store,
        gate: Gate,
        dispatcher: Dispatcher,
        metrics: Metrics,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.store = store
        self.activity = activity if activity is not None else ActivityFeed()
        self._gate = gate
        store.debounce = gate.debounce
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._unrouted_seen: set[tuple[str | None, Miss]] = set()
        self.noted: Counter[tuple[str, Reason, Action]] = Counter()
        """Events each route's guard and limits acted on, by reason and action (``/status``)."""
        self.last_event_at: float | None = None

    @property
    def router(self) -> Router:
        return self._gate.router

    @property
    def gate(self) -> Gate:
        return self._gate

    @gate.setter
    def gate(self, gate: Gate) -> None:
        # New routes can miss an inbox for a new reason: each is worth one warning again.
        self._gate = gate
        self.store.debounce = gate.debounce
        self._unrouted_seen.clear()

    # -- the Spool that sources see (bridge.sources.Spool) -------------------------------------

    def accept(self, events: Sequence[Event]) -> asyncio.Future[AcceptResults]:
        """Route ``events`` and commit them in one store transaction; see ``Spool.accept``."""
        return self._commit([(event, self._plan(event)) for event in events], _outcome)

    def _plan(self, event: Event) -> Plan:
        try:
            return self._gate.plan(event)
        except Exception:
            # A bug this event's content found must not refuse the batch around it (and, over
            # the WebSocket, every replay of it): the event goes nowhere, kept in the history
            # with its note for an operator to see and replay.
            log.exception(
                "event.plan_failed",
                event_id=event.event_id,
                inbox_id=event.inbox_id,
                hint="sent to no sink; `openmail-bridge events replay` sends it once fixed",
            )
            return GATE_FAILED

    def accept_to(
        self, event: Event, sinks: Sequence[str]
    ) -> asyncio.Future[list[AcceptResult | StoreError]]:
        """Commit ``event`` for exactly ``sinks``, the routes not asked: a test event an operator
        sends to one sink. Counted, de-duplicated and handed to delivery as :meth:`accept` does;
        the answer is the store's result, with the delivery rows it made."""
        return self._commit([(event, sinks)], _result)

    def _commit(
        self,
        routed: Sequence[tuple[Event, Plan | Sequence[str]]],
        answer_of: Callable[[AcceptResult], _AnswerT],
    ) -> asyncio.Future[list[_AnswerT | StoreError]]:
        answer: asyncio.Future[list[_AnswerT | StoreError]]
        answer = asyncio.get_running_loop().create_future()
        committed = self.store.accept_batch(routed)

        # Counting and handing rows to the sinks hang on the commit itself, not on whoever
        # waits for the answer: a webhook that gave up waiting must not strand its event.
        def on_commit(done: asyncio.Future[list[AcceptResult | StoreError]]) -> None:
            if done.cancelled():  # only a store closed under it; nothing was committed for us
                answer.cancel()
                return
            if (exc := done.exception()) is not None:
                if not answer.done():
                    answer.set_exception(exc)
                return
            results = done.result()
            try:
                self._committed([event for event, _ in routed], results)
            except Exception:
                # The events are committed whatever failed after (a log line on a full disk, a
                # bug): their callers must still hear so, or a WebSocket reader waiting on its
                # in-flight bound would wait for ever.
                with contextlib.suppress(Exception):  # the log itself may be what failed
                    log.exception("pipeline.after_commit_failed", events=len(routed))
            outcomes = [r if isinstance(r, StoreError) else answer_of(r) for r in results]
            if not answer.done():
                answer.set_result(outcomes)

        committed.add_done_callback(on_commit)
        # A failure nobody is left to see is retrieved here, not reported as "never retrieved".
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        return answer

    async def accept_one(self, event: Event) -> AcceptOutcome:
        """:meth:`accept` for a single event, its refusal raised.

        Raises:
            SpoolFullError, StoreUnavailableError: nothing was stored.
        """
        (outcome,) = await self.accept([event])
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    @property
    def cursor(self) -> str | None:
        return self.store.cursor

    @property
    def max_bytes(self) -> int:
        return self.store.limits.max_bytes

    def has_room_for(self, size: int) -> bool:
        return self.store.writable and self.store.has_room_for(size)

    async def wait_room(self, size: int = 0) -> None:
        while not self.has_room_for(size):
            await self.store.wait_writable()
            await self.store.wait_room(size)

    async def clear_cursor(self) -> None:
        await self.store.clear_cursor()

    # -- after the commit ----------------------------------------------------------------------

    def _committed(
        self, events: Sequence[Event], results: Sequence[AcceptResult | StoreError]
    ) -> None:
        """Count, publish and hand to the sinks what one commit did with ``events``.

        Per batch, not per event: one metric update per source, one hand-off to the sinks, and
        the per-event debug lines built only when they are logged.
        """
        accepted = [
            (event, result)
            for event, result in zip(events, results, strict=True)
            if not isinstance(result, StoreError) and result.outcome is AcceptOutcome.ACCEPTED
        ]
        if accepted:
            self.last_event_at = accepted[-1][0].received_at
        # Counted and handed over whatever the logging below does: an event's hand-off to its
        # sinks must never hang on a log line.
        try:
            self._publish(events, results)
        finally:
            received = Counter(event.via or event.origin.value for event, _ in accepted)
            for source, count in received.items():
                self.metrics.events_received.labels(source).inc(count)
            self.dispatcher.submit([d for _, result in accepted for d in result.deliveries])

    def _publish(
        self, events: Sequence[Event], results: Sequence[AcceptResult | StoreError]
    ) -> None:
        """Publish and log what a commit did with each of ``events``, in their order."""
        # One logger bound per batch, not one per event: binding the module's lazy logger
        # costs more than the debug lines it then drops.
        logger = log.bind()
        debug = logger.is_enabled_for(logging.DEBUG)
        accepted: list[Event] = []  # published together, before anything else of the batch
        for event, result in zip(events, results, strict=True):
            if isinstance(result, StoreError):
                continue
            source = event.via or event.origin.value
            if result.outcome is not AcceptOutcome.ACCEPTED:
                self.activity.accepted_many(accepted)
                accepted.clear()
                self._not_new(logger, event, result, source)
                continue
            accepted.append(event)
            if debug:
                logger.debug(
                    "event.accepted",
                    event_id=event.event_id,
                    event_type=event.type,
                    inbox_id=event.inbox_id,
                    source=source,
                    sinks=[d.sink for d in result.deliveries],
                )
            if result.notes:
                self._noted(logger, event, result)
            elif not result.deliveries:
                self._unrouted(logger, event, source)
        self.activity.accepted_many(accepted)

    def _not_new(
        self,
        logger: structlog.typing.FilteringBoundLogger,
        event: Event,
        result: AcceptResult,
        source: str,
    ) -> None:
        """A duplicate or a conflict: counted and logged, never delivered."""
        if result.outcome is AcceptOutcome.DUPLICATE:
            self.metrics.events_duplicate.labels(source).inc()
            self.activity.duplicate(event)
            logger.debug("event.duplicate", event_id=event.event_id, source=source)
            return
        # A warning each time: the same id carrying two different events means one of them
        # was never delivered, and only an operator can say which was right.
        self.metrics.events_conflict.labels(source).inc()
        logger.warning(
            "event.conflict",
            event_id=event.event_id,
            source=source,
            reason=result.conflict,
            inbox_id=event.inbox_id,
            event_type=event.type,
            quarantined=result.quarantined,
        )

    def gate_report(self) -> dict[str, dict[str, dict[str, int]]]:
        """:attr:`noted` as ``/status`` shows it: {route: {reason: {action: count}}}."""
        report: dict[str, dict[str, dict[str, int]]] = {}
        for (route, reason, action), count in sorted(self.noted.items()):
            report.setdefault(route, {}).setdefault(reason, {})[action] = count
        return report

    def _noted(
        self,
        logger: structlog.typing.FilteringBoundLogger,
        event: Event,
        result: AcceptResult,
    ) -> None:
        """Count and log what routes' guards and limits did: nothing disappears silently."""
        for note in result.notes:
            if note.reason in (Reason.PER_SENDER, Reason.PER_THREAD):
                self.metrics.events_limited.labels(note.route, note.reason, note.action).inc()
            elif note.action is not Action.MARKED:
                self.metrics.events_guarded.labels(note.route, note.reason).inc()
            self.noted[note.route, note.reason, note.action] += 1
        # One line per event, with its id: what it was kept from and why.
        logger.info(
            "event.guarded",
            event_id=event.event_id,
            inbox_id=event.inbox_id,
            notes=[note.as_dict() for note in result.notes],
            sinks=[d.sink for d in result.deliveries],
        )

    def _unrouted(
        self, logger: structlog.typing.FilteringBoundLogger, event: Event, source: str
    ) -> None:
        self.metrics.events_unrouted.labels(source).inc()
        miss = self._gate.router.why_unrouted(event)
        # Logged once per inbox and reason: a misrouted inbox would otherwise flood the log. The
        # inbox ids come from senders of events (a NATS publisher, say): past a bound the record
        # starts over, each pair then worth one more line.
        if (event.inbox_id, miss) in self._unrouted_seen:
            return
        if len(self._unrouted_seen) >= UNROUTED_REMEMBERED:
            self._unrouted_seen.clear()
        self._unrouted_seen.add((event.inbox_id, miss))
        # An inbox no route names is likely a mistake; a type or address a route leaves out is
        # what that route asked for, worth knowing once but not a warning.
        level = logger.warning if miss <= Miss.INBOX else logger.info
        level(
            "event.unrouted",
            event_id=event.event_id,
            inbox_id=event.inbox_id,
            event_type=event.type,
            source=source,
            reason=miss.name.lower(),
            hint=UNROUTED_HINTS[miss],
        )
