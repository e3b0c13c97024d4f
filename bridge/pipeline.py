"""The accept stage: route an event, persist it with its outbox rows, hand the rows to delivery.

Both sources call :meth:`Pipeline.accept`; it returns only once the event is durably committed (or
recognised as a duplicate, or quarantined as a conflict), which is what lets the webhook answer 200
and the WebSocket cursor move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import structlog

from bridge.events import Event
from bridge.metrics import Metrics
from bridge.routing import Router
from bridge.store import AcceptOutcome, Store

if TYPE_CHECKING:
    from bridge.delivery import Dispatcher

log = structlog.get_logger("bridge.pipeline")
_T = TypeVar("_T")


def uncancellable(accepting: Awaitable[_T]) -> asyncio.Future[_T]:
    """``accepting`` run to its end even if the caller stops waiting (an answer timed out, a
    connection closed): a commit that lands must still reach the sinks. A failure nobody is
    left to see is retrieved here, not reported as "never retrieved"."""
    task = asyncio.ensure_future(accepting)
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return asyncio.shield(task)


class Pipeline:
    """Normalized events in, durable outbox rows out. The router is swapped on reload."""

    def __init__(
        self, store: Store, router: Router, dispatcher: Dispatcher, metrics: Metrics
    ) -> None:
        self.store = store
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics
        self._unrouted_inboxes: set[str | None] = set()
        self.last_event_at: float | None = None

    async def accept(self, event: Event) -> AcceptOutcome:
        """Persist ``event`` once. Raises SpoolFullError or StoreUnavailableError (nothing stored).

        The store enqueues synchronously before this coroutine first suspends, so accepts started
        in order commit in order (the WebSocket cursor relies on it).
        """
        sinks = self.router(event)
        result = await self.store.accept(event, sinks)
        source = event.origin.value
        if result.outcome is AcceptOutcome.DUPLICATE:
            self.metrics.events_duplicate.labels(source).inc()
            log.debug("event.duplicate", event_id=event.event_id, source=source)
            return result.outcome
        if result.outcome is AcceptOutcome.CONFLICT:
            # A warning each time: the same id carrying two different events means one of them
            # was never delivered, and only an operator can say which was right.
            self.metrics.events_conflict.labels(source).inc()
            log.warning(
                "event.conflict",
                event_id=event.event_id,
                source=source,
                reason=result.conflict,
                inbox_id=event.inbox_id,
                event_type=event.type,
                quarantined=result.quarantined,
            )
            return result.outcome
        self.metrics.events_received.labels(source).inc()
        self.last_event_at = event.received_at
        # Debug, not info: at thousands of events a second the line costs more than the event.
        log.debug(
            "event.accepted",
            event_id=event.event_id,
            event_type=event.type,
            inbox_id=event.inbox_id,
            source=source,
            sinks=list(sinks),
        )
        if not sinks:
            self.metrics.events_unrouted.inc()
            # Logged once per inbox: a misrouted inbox would otherwise flood the log.
            if event.inbox_id not in self._unrouted_inboxes:
                self._unrouted_inboxes.add(event.inbox_id)
                log.warning(
                    "event.unrouted",
                    event_id=event.event_id,
                    inbox_id=event.inbox_id,
                    event_type=event.type,
                    hint="no route matches this inbox; its events are recorded but sent nowhere",
                )
        self.dispatcher.submit(result.deliveries)
        return result.outcome
