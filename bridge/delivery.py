"""Delivery: per-sink workers that drain the outbox in order, retry with backoff, dead-letter.

Each sink has its own :class:`SinkWorker` (own tasks, queue, retry state), so a slow or dead sink
never holds up another, nor ingest. Ordering within a sink is by *lane*: with ``ordering: thread``
a lane is a thread (else the inbox, else one shared lane); one delivery per lane is in flight at a
time (for a sink that takes batches, one batch holding the lane's rows in order) and lanes proceed
in parallel up to ``concurrency``. A delivery that is retrying holds its
lane; a dead-lettered one releases it. Rows live in the store until delivered, so memory holds only
a window of them and a crash loses nothing.

A row may carry times the store decided at accept (:mod:`bridge.windows`): a lane whose head is
held by a rate limit or gathered in a debounce window waits, behind one timer per worker, and the
rows of a window then go together (as one request to a :class:`~bridge.sinks.WindowSink`). A row
due further off than a minute is parked without its payload (:mod:`bridge.intake`), so held rows
never keep rows of other lanes out of memory. A stop flushes open windows but keeps holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import structlog
from tenacity import RetryCallState

from bridge import logs, redact
from bridge.activity import ActivityFeed
from bridge.config import Secret, SinkConfig
from bridge.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from bridge.health import SinkState
from bridge.intake import Intake
from bridge.lanes import Taken
from bridge.metrics import Metrics
from bridge.recorder import Delivered, Recorder
from bridge.retry_policy import RetryPolicy
from bridge.sinks import BatchSink, Sink, WindowSink
from bridge.store import Delivery, Store
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.delivery")

WINDOW = 2000
"""Deliveries a worker keeps in memory with their payloads, in flight included; the rest wait in
the store until the window drains."""
RETRYING_AT_ONCE = 64
"""Retry waits of a sink with a stand-in taking rows meanwhile; past it, a wait keeps its place."""
PARKED = 100_000
"""Deliveries a worker keeps parked (no payload) until their hold or debounce window comes near;
the rest wait in the store until some have gone. A parked row costs about 150 bytes, 550 when
each is a thread of its own: at most some 55 MB."""
BATCH = 256
"""Deliveries a worker hands a ``BatchSink`` at once: one write, one fsync, one store commit."""
RETRY_LOG_INTERVAL = 60.0
"""Seconds between a sink's ``delivery.retrying`` warnings; the retries in between log at debug."""
TIMER_MAX = 60.0
"""Longest a worker's timer sleeps before it reads the clock again (which may have been set)."""
MARKS_AHEAD = 1000
"""Delivered rows a sink's workers may leave behind, their ids in the store's delivered log and
their mark not yet committed, before a worker waits for it: bounds what a store that cannot
write keeps in memory."""
MARK_GRACE = 1.0
"""Seconds a stop waits for delivered marks past its deadline: a commit's time, not an attempt's."""


def sink_credentials(config: SinkConfig[object]) -> list[str]:
    """The literal credentials in a sink's options (signing secret, extra header values, URL
    user-info and secret query values), whatever the sink type: any option named so is read."""
    options = config.options
    values: list[str] = []
    secret = getattr(options, "secret", None)
    if isinstance(secret, Secret):
        values.append(secret.get())
    headers = getattr(options, "headers", None)
    if isinstance(headers, Mapping):
        values += redact.header_secrets(headers)
    url = getattr(options, "url", None)
    if isinstance(url, str):
        values += redact.url_secrets(url)
    return values


class SinkWorker:
    """Drains one sink's outbox rows. ``submit`` is called for rows the pipeline just committed."""

    def __init__(
        self,
        config: SinkConfig[object],
        sink: Sink,
        store: Store,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
        activity: ActivityFeed | None = None,
    ) -> None:
        self.config = config
        self.activity = activity if activity is not None else ActivityFeed()
        self.sink = sink
        self.store = store
        self.metrics = metrics
        self.state = SinkState()  # a reload that replaces the worker sets the old one's
        self._sleep = sleep
        self._clock = clock  # Unix time, as the store's hold and window times are
        self._log = log.bind(sink=config.name)
        self._retry_log = Throttle(RETRY_LOG_INTERVAL, clock=clock)
        self._intake = Intake(
            store, config.name, config.ordering,
            window=WINDOW, parked=PARKED, clock=clock, log=self._log,
        )  # fmt: skip
        self._lanes = self._intake.lanes
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = 0.0  # when the running timer rings
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._retry = RetryPolicy(
            config.retry, clock=clock, sleep=self._retry_wait, stopping=self._stopping
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._workers = 0  # tasks taking rows, set at start: concurrency, or 1 for strict order
        self._waiting = 0  # tasks in a retry's wait
        self._refill: asyncio.Task[None] | None = None
        self._credentials = sink_credentials(config)
        # Decided once: a runtime-checkable Protocol's isinstance walks its members each time.
        self._batch_sink = sink if isinstance(sink, BatchSink) else None
        self._window_sink = sink if isinstance(sink, WindowSink) and sink.sends_windows else None
        self._batch = batch if self._batch_sink or self._window_sink else 1
        self._recorder = Recorder(self._mark, self._recorded)
        self._unlisten: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def retries_waiting(self) -> int:  # deliveries waiting to be tried again
        return self._waiting

    @property
    def in_memory(self) -> int:
        """Rows held with their payloads (at most ``WINDOW``, but for redriven ones)."""
        return len(self._lanes)

    @property
    def parked(self) -> int:
        """Rows parked without their payloads (at most ``PARKED``, but for redriven ones)."""
        return len(self._intake.parked)

    # --- feeding ---------------------------------------------------------------------------

    def submit(self, deliveries: Iterable[Delivery]) -> None:
        self._intake.submit(deliveries)
        self._changed()

    async def resync(self) -> int:
        """Pick up rows changed by another process (``dlq retry``), keeping what is in memory;
        the count of redriven rows taken (see :meth:`Intake.resync`)."""
        taken = await self._intake.resync()
        self._changed()
        return taken

    def _changed(self) -> None:
        """Rows came in: wake a worker if a lane may go (or rows wait in the store, which an idle
        worker loads), else have the timer ring when one may."""
        if self._lanes.ready or self._intake.overflow:
            self._wakeup.set()
        else:
            self._arm()

    def _refilling(self) -> bool:
        return self._refill is not None and not self._refill.done()

    async def _refilled(self) -> None:
        await self._intake.refill()
        self._wakeup.set()  # a worker takes what came in, or arms the timer for it

    # --- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.sink.start()
        # Marks commit from the store too (rows a stopped worker wrote ahead): a read in flight
        # must learn of every one.
        self._unlisten = self.store.on_marks_committed(self._intake.recorded)
        await self._intake.load(after_seq=0)
        self._workers = 1 if self.config.ordering == "strict" else self.config.concurrency
        self._recorder.start(f"sink:{self.name}:record")
        self._tasks = [self._worker_task() for _ in range(self._workers)]

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a drain deadline, as in asyncio.wait
        """Stop taking rows, but for open debounce windows, which go now (parked ones read back
        first); let attempts in flight finish up to ``timeout``; the rest (held rows included)
        stay put."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        now = self._clock()
        self._lanes.flush(now)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self._intake.unpark(now, flushing=True)
        self._stopping.set()
        self._wakeup.set()
        if self._timer:
            self._timer.cancel()
        if self._tasks:
            _, still = await asyncio.wait(self._tasks, timeout=max(0.0, deadline - loop.time()))
            for task in still:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # What was delivered is marked, within the deadline, but a store commit's time at least:
        # an unmarked row is delivered again after the restart.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - loop.time(), MARK_GRACE)):
                await self._recorder.drain()
        await self._recorder.close()
        # Rows written ahead of a mark cut short here (a reload while the store cannot write):
        # the store marks them once it can, or they would stay pending until the next start.
        self.store.mark_later([d.id for d in self._recorder.unrecorded() if self.store.noted(d.id)])
        if self._refill:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.sink.close()
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None

    def abort(self) -> None:
        """Cut attempts in flight short (a second signal); their rows stay pending."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        self._recorder.cancel()

    async def _next(self) -> Taken | None:
        """The next deliveries, each with its lane, which stays busy until they are done: one
        row, a debounce window's rows for a :class:`WindowSink`, or up to ``batch`` rows of the
        ready lanes for a :class:`BatchSink` (written in order, so every thread's order holds).
        None once stopping and no open window is left to flush."""
        while True:
            stopping = self._stopping.is_set()
            now = self._clock()
            if not stopping:
                self._lanes.promote(now)
            windows = self._window_sink is not None
            taken = self._lanes.take(now, batch=self._batch, windows=windows, flushing=stopping)
            if stopping:
                return taken or None
            if not self._refilling() and self._intake.wants_refill(now, idle=not taken):
                self._refill = asyncio.create_task(self._refilled(), name=f"sink:{self.name}:in")
            if taken:
                return taken
            self._arm()
            self._wakeup.clear()
            await self._wakeup.wait()

    def _arm(self) -> None:
        """Have the timer wake the worker when a waiting lane may go or parked rows come near,
        unless it will."""
        at = self._intake.next_at(refilling=self._refilling())
        if at is None or self._stopping.is_set():
            return
        if self._timer is not None and not self._timer.done():
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.create_task(self._ring(at), name=f"sink:{self.name}:timer")

    async def _ring(self, at: float) -> None:
        await self._sleep(min(max(0.0, at - self._clock()), TIMER_MAX))
        self._wakeup.set()

    def _release(self, items: Taken) -> None:
        self._intake.settle(items)

    def _worker_task(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._work(), name=f"sink:{self.name}:{len(self._tasks)}")

    async def _retry_wait(self, seconds: float) -> None:
        """A retry's wait, with a stand-in taking rows meanwhile: a failing thread waits on its
        own (its lane busy, its order held), the others go now, not after ``max_age``."""
        self._waiting += 1
        try:
            live = [task for task in self._tasks if not task.done()]
            if (
                self.config.ordering != "strict"
                and not self._stopping.is_set()
                and len(live) - self._waiting < self._workers
                and len(live) < self._workers + RETRYING_AT_ONCE
            ):
                self._tasks = [*live, self._worker_task()]
            await self._sleep(seconds)
        finally:
            self._waiting -= 1

    async def _work(self) -> None:
        while (items := await self._next()) is not None:
            try:
                if self._batch_sink is not None and len(items) > 1:
                    await self._deliver_batch([delivery for _, delivery in items])
                else:
                    await self._deliver([delivery for _, delivery in items])
            except Exception:
                # A bug must not end this worker for the life of the process; the rows stay
                # pending in the store and are delivered again after the next resync or restart.
                self._log.exception("delivery.worker_error", event_id=items[0][1].event_id)
            finally:
                self._release(items)
                self._wakeup.set()
            if sum(not task.done() for task in self._tasks) - self._waiting > self._workers:
                return  # a stand-in whose waiting worker is back: one too many take rows now

    # --- one delivery ----------------------------------------------------------------------

    def _error_text(self, exc: BaseException | None) -> str:
        """A failure as ``last_error``, the logs and the dead-letter table show it: with the
        sink's own credentials and the config's secrets masked, whatever the sink put in it."""
        return redact.scrub_text(str(exc), (*self._credentials, *logs.REDACTOR.secrets))

    async def _before_sleep(
        self, group: Sequence[Delivery], attempts: int, state: RetryCallState
    ) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error = self._error_text(exc)
        self.metrics.deliveries.labels(self.name, "retry").inc(len(group))
        self.state.last_error, self.state.last_error_at = error, time.time()
        wait = state.next_action.sleep if state.next_action else 0.0
        attempt = attempts + state.attempt_number
        fields = {
            "event_id": group[0].event_id,
            "attempt": attempt,
            "error": error,
            "retry_in": round(wait, 3),
            **({"event_ids": [d.event_id for d in group]} if len(group) > 1 else {}),
        }
        # A sink down for an hour retries every row it holds: a warning a minute says so, the
        # rest go to debug (the metrics, the stats line and last_error count them all).
        if (extra := self._retry_log.admit_fields("retries_since_last_line")) is not None:
            self._log.warning("delivery.retrying", **fields, **extra)
        else:
            self._log.debug("delivery.retrying", **fields)
        for delivery in group:
            with contextlib.suppress(StoreError):
                await self.store.record_attempt(delivery.id, attempts=attempt, error=error)
            # Published once recorded, as delivered and dead are: a reader that asks the store
            # then finds what it was told.
            self.activity.retrying(delivery, attempt, error)

    async def _deliver(self, group: Sequence[Delivery]) -> None:
        """One delivery with its retries: one event, or a debounce window's events as one
        request to a :class:`WindowSink`, whose outcome is then every one of theirs."""
        head = group[0]
        attempts = max(delivery.attempts for delivery in group)

        # A coroutine function, not a lambda returning a coroutine: tenacity awaits only the
        # former and would drop the latter unawaited (no log, no metric, no attempt recorded).
        async def before_sleep(state: RetryCallState) -> None:
            await self._before_sleep(group, attempts, state)

        tries = 1
        try:
            first = await self._first_attempt(group)
            if first is not None:
                async for attempt in self._retry.retrying(head, attempts, before_sleep):
                    with attempt:
                        tries = attempt.retry_state.attempt_number
                        if tries == 1:  # tenacity's attempt 1 is the one that just failed
                            raise first
                        if self._stopping.is_set():
                            raise RetryableDeliveryError("the bridge is stopping")
                        await self._send(group)
        except (RetryableDeliveryError, PermanentDeliveryError) as exc:
            if isinstance(exc, RetryableDeliveryError) and self._stopping.is_set():
                return  # shutting down: the rows stay pending for the next start
            for delivery in group:
                await self._dead_letter(delivery, attempts + tries, exc)
            return
        await self._record(group, attempts + tries)

    async def _deliver_batch(self, deliveries: list[Delivery]) -> None:
        """Many deliveries in one ``send_batch`` and one store commit. A failure of the batch as a
        whole (the file cannot be written) sends them again one by one, each with its own retries,
        so no event's failure becomes another's; so does a write that failed after the lines
        before it were written, for its line and those after it only."""
        assert self._batch_sink is not None  # _batch > 1 only for a BatchSink
        try:
            results = await self._batch_sink.send_batch(deliveries)
        except Exception as exc:
            if not isinstance(exc, DeliveryError):
                self._log.exception("delivery.sink_error", event_id=deliveries[0].event_id)
            for delivery in deliveries:
                if self._stopping.is_set():
                    return  # the rest stay pending for the next start
                await self._deliver((delivery,))
            return
        done = [d for d, failure in zip(deliveries, results, strict=True) if failure is None]
        if done:
            await self._record(done, None)
        for delivery, failure in zip(deliveries, results, strict=True):
            if isinstance(failure, PermanentDeliveryError):
                await self._dead_letter(delivery, delivery.attempts + 1, failure)
            elif failure is not None:  # not written: on its own, with its own retries
                if self._stopping.is_set():
                    return  # the rest stay pending for the next start
                await self._deliver((delivery,))

    async def _record(self, deliveries: Sequence[Delivery], attempt: int | None) -> None:
        """Hand delivered rows to the recorder. The worker goes on at once when the store's
        delivered log took their ids (a crash then no longer repeats them), and waits for their
        mark's commit otherwise, or when ``MARKS_AHEAD`` rows are on their way already."""
        ahead = len(self._recorder) < MARKS_AHEAD and self.store.note_delivered(
            [delivery.id for delivery in deliveries]
        )
        recorded = self._recorder.add(deliveries, attempt)
        if not ahead:
            await recorded

    async def _mark(self, deliveries: list[Delivery]) -> bool:
        ids = [delivery.id for delivery in deliveries]
        return await self._store_call(lambda: self.store.mark_delivered_many(ids), deliveries[0])

    def _recorded(self, batch: Sequence[Delivered]) -> None:
        # Counted once recorded, so /status never shows a delivered row as still pending.
        now = time.time()
        self.state.delivered += len(batch)
        self.state.last_delivered_at = now
        self.metrics.deliveries.labels(self.name, "delivered").inc(len(batch))
        self.metrics.delivery_latency.labels(self.name).observe_many(
            [max(0.0, now - delivery.received_at) for delivery, _ in batch]
        )
        tried = [(d, d.attempts + 1 if attempt is None else attempt) for d, attempt in batch]
        self.activity.delivered_many(tried)
        if self._log.is_enabled_for(logging.DEBUG):
            for delivery, attempt in tried:
                self._log.debug("delivery.sent", event_id=delivery.event_id, attempt=attempt)

    async def _first_attempt(self, group: Sequence[Delivery]) -> RetryableDeliveryError | None:
        """Most deliveries succeed at once, so the first attempt runs without tenacity, whose
        per-call set-up was a sixth of the delivery path's time. Returns a retryable failure."""
        try:
            await self._send(group)
        except RetryableDeliveryError as exc:
            return exc
        return None

    async def _send(self, group: Sequence[Delivery]) -> None:
        """``sink.send``, or ``send_window`` for a sink that takes windows (every request then
        has the same form, a window of one included), with any failure a sink did not classify
        treated as retryable."""
        try:
            if self._window_sink is not None:
                await self._window_sink.send_window(group)
            else:
                await self.sink.send(group[0])
        except DeliveryError:
            raise
        except Exception as exc:
            self._log.exception("delivery.sink_error", event_id=group[0].event_id)
            raise RetryableDeliveryError(f"{type(exc).__name__}: {exc}") from exc

    async def _dead_letter(self, delivery: Delivery, attempts: int, exc: Exception) -> None:
        error = self._error_text(exc)
        self.state.dead += 1
        self.state.last_error, self.state.last_error_at = error, time.time()
        self.metrics.deliveries.labels(self.name, "dead").inc()
        self._log.error(
            "delivery.dead_lettered",
            event_id=delivery.event_id,
            attempt=attempts,
            error=error,
            permanent=isinstance(exc, PermanentDeliveryError),
        )
        await self._store_call(
            lambda: self.store.dead_letter(delivery.id, error=error, attempts=attempts), delivery
        )
        self.state.dead_recorded += 1
        self.activity.dead(delivery, attempts, error)

    async def _store_call(self, call: Callable[[], Awaitable[None]], delivery: Delivery) -> bool:
        """Record an outcome; if the store cannot write, retry once it can (the row stays put).
        False when it gave up, stopping."""
        while True:
            try:
                await call()
                return True
            except StoreError as exc:
                self._log.warning(
                    "delivery.outcome_not_recorded", event_id=delivery.event_id, error=str(exc)
                )
                if self._stopping.is_set():
                    return False  # delivered again after restart: at least once allows it
                await self.store.wait_writable()
