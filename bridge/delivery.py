"""Delivery: per-sink workers that drain the outbox in order, retry with backoff, dead-letter.

Each sink has its own :class:`SinkWorker` (own tasks, queue, retry state), so a slow or dead sink
never holds up another, nor ingest. Ordering within a sink is by *lane*: with ``ordering: thread``
a lane is a thread (else the inbox, else one shared lane); one delivery per lane is in flight at a
time (for a sink that takes batches, one batch holding the lane's rows in order) and lanes proceed
in parallel up to ``concurrency``. A delivery that is retrying holds its
lane; a dead-lettered one releases it. Rows live in the store until delivered, so memory holds only
a window of them and a crash loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from bridge import logs, redact
from bridge.backoff import full_jitter
from bridge.config import Secret, SinkConfig
from bridge.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
    StoreError,
)
from bridge.metrics import Metrics
from bridge.sinks import BatchSink, Sink
from bridge.store import Delivery, Store

log = structlog.get_logger("bridge.delivery")

WINDOW = 2000
"""Deliveries a worker keeps in memory; the rest wait in the store until the window drains."""
BATCH = 256
"""Deliveries a worker hands a ``BatchSink`` at once: one write, one fsync, one store commit."""
RESYNC_PAGE = 1000
"""Rows per store read when a resync looks for redriven rows below those already seen."""


def lane_of(delivery: Delivery, ordering: str) -> object:
    if ordering == "strict":
        return "*"
    if ordering == "none":
        return delivery.id
    if delivery.thread_id:
        return ("thread", delivery.thread_id)
    return ("inbox", delivery.inbox_id)


def redriven(delivery: Delivery) -> bool:
    """A row ``dlq retry`` moved back to pending, not attempted since: only that resets attempts
    to 0 and keeps the error, where a row never tried has no error."""
    return delivery.attempts == 0 and delivery.last_error is not None


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


@dataclass(slots=True)
class SinkState:
    """What ``/status`` shows of a sink."""

    delivered: int = 0
    dead: int = 0
    dead_recorded: int = 0  # of ``dead``, those whose write has committed
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None


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
        batch: int = BATCH,
    ) -> None:
        self.config = config
        self.sink = sink
        self.store = store
        self.metrics = metrics
        self.state = SinkState()
        self._sleep = sleep
        self._lanes: dict[object, deque[Delivery]] = {}
        self._ready: deque[object] = deque()
        self._busy: set[object] = set()
        self._known: set[int] = set()  # ids in memory or in flight
        self._max_seq = 0
        self._overflow = False
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loader: asyncio.Task[int] | None = None
        # One set per store read in progress: ids whose outcome was recorded meanwhile. The read
        # may still see them pending; adding them again would deliver them twice.
        self._reads: list[set[int]] = []
        self._log = log.bind(sink=config.name)
        self._credentials = sink_credentials(config)
        # Decided once: a runtime-checkable Protocol's isinstance walks its members each time.
        self._batch_sink = sink if isinstance(sink, BatchSink) else None
        self._batch = batch if self._batch_sink is not None else 1

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def in_memory(self) -> int:
        return len(self._known)

    # --- feeding ---------------------------------------------------------------------------

    def submit(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            # While a load is reading, older rows may still be only in the store: taking this one
            # now would put it before them in its thread and move _max_seq past them for good.
            if self._overflow or self._reads or len(self._known) >= WINDOW:
                # The row is committed; the loader fetches it from the store once there is room.
                self._overflow = True
                continue
            self._add(delivery)

    def _add(self, delivery: Delivery) -> bool:
        if delivery.id in self._known:
            return False
        self._known.add(delivery.id)
        self._max_seq = max(self._max_seq, delivery.seq)
        lane = lane_of(delivery, self.config.ordering)
        queue = self._lanes.get(lane)
        if queue is None:
            self._lanes[lane] = deque([delivery])
            if lane not in self._busy:
                self._ready.append(lane)
                self._wakeup.set()
        elif queue and queue[-1].seq > delivery.seq:
            # A redriven row goes before its lane's later rows.
            items = sorted([*queue, delivery], key=lambda d: d.seq)
            queue.clear()
            queue.extend(items)
        else:
            queue.append(delivery)
        return True

    async def load(self, *, after_seq: int) -> int:
        """Pull committed rows from the store into the window; the count of redriven ones."""
        room = WINDOW - len(self._known)
        if room <= 0:
            return 0
        self._overflow = False
        settled: set[int] = set()
        self._reads.append(settled)
        try:
            rows = await self.store.pending(self.name, after_seq=after_seq, limit=room)
        except StoreError as exc:
            # The rows stay in the store; the next load (on the next wake-up) reads them.
            self._overflow = True
            self._log.warning("delivery.load_failed", error=str(exc))
            return 0
        finally:
            self._reads = [s for s in self._reads if s is not settled]
        taken = sum(redriven(row) for row in rows if row.id not in settled and self._add(row))
        if len(rows) >= room:
            self._overflow = True
        if self._overflow:
            self._wakeup.set()  # an idle worker starts the next load
        return taken

    async def resync(self) -> int:
        """Pick up rows changed by another process (``dlq retry``), keeping what is in memory;
        the count of redriven rows taken.

        A redriven row sits at or below ``_max_seq``, where the loader never looks again, and
        the window may be full: such rows are taken whatever the window (a redrive is an explicit,
        bounded act). Rows above ``_max_seq`` are loaded as usual.
        """
        settled: set[int] = set()
        self._reads.append(settled)
        taken = 0
        try:
            after = 0
            while after < self._max_seq:
                rows = await self.store.pending(self.name, after_seq=after, limit=RESYNC_PAGE)
                for row in rows:
                    if row.seq <= self._max_seq and row.id not in settled and self._add(row):
                        taken += redriven(row)
                after = rows[-1].seq if rows else self._max_seq
        finally:
            self._reads = [s for s in self._reads if s is not settled]
        return taken + await self.load(after_seq=self._max_seq)

    # --- running ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.sink.start()
        await self.load(after_seq=0)
        workers = 1 if self.config.ordering == "strict" else self.config.concurrency
        self._tasks = [
            asyncio.create_task(self._work(), name=f"sink:{self.name}:{i}") for i in range(workers)
        ]

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - a drain deadline, as in asyncio.wait
        """Stop taking rows; let attempts in flight finish up to ``timeout``; the rest stay put."""
        self._stopping.set()
        self._wakeup.set()
        if self._tasks:
            _, still = await asyncio.wait(self._tasks, timeout=timeout)
            for task in still:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._loader:
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.sink.close()

    def abort(self) -> None:
        """Cut attempts in flight short (a second signal); their rows stay pending."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()

    async def _next(self) -> list[tuple[object, Delivery]] | None:
        while not self._stopping.is_set():
            if self._ready:
                return self._take()
            if self._overflow and (self._loader is None or self._loader.done()):
                self._loader = asyncio.create_task(self.load(after_seq=self._max_seq))
            self._wakeup.clear()
            await self._wakeup.wait()
        return None

    def _take(self) -> list[tuple[object, Delivery]]:
        """The next deliveries, each with its lane, which stays busy until they are done.

        One for a sink that takes events one at a time. For a :class:`BatchSink`, up to
        ``batch`` of them: the ready lanes' heads and the rows behind them, in lane order, so a
        batch written in order keeps every thread's order.
        """
        taken: list[tuple[object, Delivery]] = []
        while self._ready and len(taken) < self._batch:
            lane = self._ready.popleft()
            self._busy.add(lane)
            queue = self._lanes[lane]
            taken.append((lane, queue.popleft()))
            while queue and len(taken) < self._batch:
                taken.append((lane, queue.popleft()))
        return taken

    def _release(self, items: list[tuple[object, Delivery]]) -> None:
        lanes: dict[object, None] = {}
        for lane, delivery in items:
            self._known.discard(delivery.id)
            for settled in self._reads:
                settled.add(delivery.id)
            lanes[lane] = None
        for lane in lanes:
            self._busy.discard(lane)
            queue = self._lanes.get(lane)
            if queue:
                self._ready.append(lane)
            elif queue is not None:
                del self._lanes[lane]
        if self._overflow and len(self._known) < WINDOW // 2:
            self._wakeup.set()

    async def _work(self) -> None:
        while (items := await self._next()) is not None:
            try:
                if len(items) == 1:
                    await self._deliver(items[0][1])
                else:
                    await self._deliver_batch([delivery for _, delivery in items])
            except Exception:
                # A bug must not end this worker for the life of the process; the rows stay
                # pending in the store and are delivered again after the next resync or restart.
                self._log.exception("delivery.worker_error", event_id=items[0][1].event_id)
            finally:
                self._release(items)
                self._wakeup.set()

    # --- one delivery ----------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        retry = self.config.retry
        delay = full_jitter(state.attempt_number, retry.initial, retry.max)
        outcome = state.outcome
        exc = outcome.exception() if outcome else None
        if isinstance(exc, RetryableDeliveryError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)  # never retry before the server asked us to
        return delay

    def _should_stop(
        self, delivery: Delivery, attempts_before: int
    ) -> Callable[[RetryCallState], bool]:
        retry = self.config.retry

        def stop(state: RetryCallState) -> bool:
            attempts = attempts_before + state.attempt_number
            if retry.max_attempts and attempts >= retry.max_attempts:
                return True
            return time.time() - delivery.received_at >= retry.max_age or self._stopping.is_set()

        return stop

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        waiter = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                [asyncio.ensure_future(self._sleep(seconds)), waiter],
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiter.cancel()

    def _error_text(self, exc: BaseException | None) -> str:
        """A failure as ``last_error``, the logs and the dead-letter table show it: with the
        sink's own credentials and the config's secrets masked, whatever the sink put in it."""
        return redact.scrub_text(str(exc), (*self._credentials, *logs.REDACTOR.secrets))

    async def _before_sleep(self, delivery: Delivery, attempts: int, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error = self._error_text(exc)
        self.metrics.deliveries.labels(self.name, "retry").inc()
        self.state.last_error, self.state.last_error_at = error, time.time()
        wait = state.next_action.sleep if state.next_action else 0.0
        self._log.warning(
            "delivery.retrying",
            event_id=delivery.event_id,
            attempt=attempts + state.attempt_number,
            error=error,
            retry_in=round(wait, 3),
        )
        with contextlib.suppress(StoreError):
            await self.store.record_attempt(
                delivery.id, attempts=attempts + state.attempt_number, error=error
            )

    async def _deliver(self, delivery: Delivery) -> None:
        attempts = delivery.attempts

        # A coroutine function, not a lambda returning a coroutine: tenacity awaits only the
        # former and would drop the latter unawaited (no log, no metric, no attempt recorded).
        async def before_sleep(state: RetryCallState) -> None:
            await self._before_sleep(delivery, attempts, state)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableDeliveryError),
            wait=self._wait,
            stop=self._should_stop(delivery, attempts),
            sleep=self._sleep_unless_stopping,
            before_sleep=before_sleep,
            reraise=True,
        )
        tries = 1
        try:
            first = await self._first_attempt(delivery)
            if first is not None:
                async for attempt in retrying:
                    with attempt:
                        tries = attempt.retry_state.attempt_number
                        if tries == 1:  # tenacity's attempt 1 is the one that just failed
                            raise first
                        if self._stopping.is_set():
                            raise RetryableDeliveryError("the bridge is stopping")
                        await self._send(delivery)
        except (RetryableDeliveryError, PermanentDeliveryError) as exc:
            if isinstance(exc, RetryableDeliveryError) and self._stopping.is_set():
                return  # shutting down: the row stays pending for the next start
            await self._dead_letter(delivery, attempts + tries, exc)
            return
        await self._store_call(lambda: self.store.mark_delivered(delivery.id), delivery)
        self._count_delivered((delivery,), attempt=attempts + tries)

    async def _deliver_batch(self, deliveries: list[Delivery]) -> None:
        """Many deliveries in one ``send_batch`` and one store commit. A failure of the batch as a
        whole (the file cannot be written) sends them again one by one, each with its own retries,
        so no event's failure becomes another's."""
        assert self._batch_sink is not None  # _batch > 1 only for a BatchSink
        try:
            results = await self._batch_sink.send_batch(deliveries)
        except Exception as exc:
            if not isinstance(exc, DeliveryError):
                self._log.exception("delivery.sink_error", event_id=deliveries[0].event_id)
            for delivery in deliveries:
                if self._stopping.is_set():
                    return  # the rest stay pending for the next start
                await self._deliver(delivery)
            return
        done = [d for d, failure in zip(deliveries, results, strict=True) if failure is None]
        for delivery, failure in zip(deliveries, results, strict=True):
            if failure is not None:
                await self._dead_letter(delivery, delivery.attempts + 1, failure)
        if done:
            ids = [d.id for d in done]
            await self._store_call(lambda: self.store.mark_delivered_many(ids), done[0])
            self._count_delivered(done, attempt=None)

    def _count_delivered(self, deliveries: Sequence[Delivery], *, attempt: int | None) -> None:
        # Counted once recorded, so /status never shows a delivered row as still pending.
        now = time.time()
        self.state.delivered += len(deliveries)
        self.state.last_delivered_at = now
        self.metrics.deliveries.labels(self.name, "delivered").inc(len(deliveries))
        latency = self.metrics.delivery_latency.labels(self.name)
        for delivery in deliveries:
            latency.observe(max(0.0, now - delivery.received_at))
            self._log.debug(
                "delivery.sent",
                event_id=delivery.event_id,
                attempt=delivery.attempts + 1 if attempt is None else attempt,
            )

    async def _first_attempt(self, delivery: Delivery) -> RetryableDeliveryError | None:
        """Most deliveries succeed at once, so the first attempt runs without tenacity, whose
        per-call set-up was a sixth of the delivery path's time. Returns a retryable failure."""
        try:
            await self._send(delivery)
        except RetryableDeliveryError as exc:
            return exc
        return None

    async def _send(self, delivery: Delivery) -> None:
        """``sink.send``, with any failure a sink did not classify treated as retryable."""
        try:
            await self.sink.send(delivery)
        except DeliveryError:
            raise
        except Exception as exc:
            self._log.exception("delivery.sink_error", event_id=delivery.event_id)
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

    async def _store_call(self, call: Callable[[], Awaitable[None]], delivery: Delivery) -> None:
        """Record an outcome; if the store cannot write, retry once it can (the row stays put)."""
        while True:
            try:
                await call()
                return
            except StoreError as exc:
                self._log.warning(
                    "delivery.outcome_not_recorded", event_id=delivery.event_id, error=str(exc)
                )
                if self._stopping.is_set():
                    return  # delivered again after restart: allowed by the at-least-once guarantee
                await self.store.wait_writable()
