"""A sink's delivery retry policy: how long before the next attempt (the shared backoff curve,
never sooner than the receiver's ``Retry-After``), when to give up (attempts, age), and a sleep
that a stop cuts short, as does the end of an outage the failure names (its ``wake``). Clock,
sleep and the stop event are given, so tests run the schedule in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from bridge.backoff import full_jitter
from bridge.config import RetryConfig
from bridge.errors import RetryableDeliveryError
from bridge.store import Delivery

Wake = Callable[[], Awaitable[None]]
"""What a retryable failure offers to end its retry's wait early: see RetryableDeliveryError."""


class RetryPolicy:
    """The retries of one sink's deliveries, as its ``retry:`` config says."""

    __slots__ = ("_clock", "_config", "_sleep", "_stopping")

    def __init__(
        self,
        config: RetryConfig,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        stopping: asyncio.Event,
    ) -> None:
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._stopping = stopping

    def retrying(
        self,
        delivery: Delivery,
        attempts_before: int,
        before_sleep: Callable[[RetryCallState], Awaitable[None]],
    ) -> AsyncRetrying:
        """The tenacity loop for ``delivery`` (the first of a window's), tried
        ``attempts_before`` times already."""
        # What may end the coming wait early: the last failure's wake, read when tenacity
        # computes the wait (the sleep itself is told only the seconds).
        wake: Wake | None = None

        def wait(state: RetryCallState) -> float:
            nonlocal wake
            outcome = state.outcome
            exc = outcome.exception() if outcome else None
            retryable = isinstance(exc, RetryableDeliveryError) and exc.retry_after is None
            wake = exc.wake if retryable and isinstance(exc, RetryableDeliveryError) else None
            return self.wait(state)

        async def sleep(seconds: float) -> None:
            await self.sleep(seconds, wake=wake)

        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableDeliveryError),
            wait=wait,
            stop=self._stop_for(delivery, attempts_before),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def wait(self, state: RetryCallState) -> float:
        retry = self._config
        delay = full_jitter(state.attempt_number, retry.initial, retry.max)
        outcome = state.outcome
        exc = outcome.exception() if outcome else None
        if isinstance(exc, RetryableDeliveryError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)  # never retry before the server asked us to
        return delay

    def _stop_for(
        self, delivery: Delivery, attempts_before: int
    ) -> Callable[[RetryCallState], bool]:
        retry = self._config
        # A row held by a rate limit or gathered in a window ages from when it could first go.
        since = max(delivery.received_at, delivery.due or 0.0)

        def stop(state: RetryCallState) -> bool:
            attempts = attempts_before + state.attempt_number
            if retry.max_attempts and attempts >= retry.max_attempts:
                return True
            now = self._clock()
            # A Retry-After past max_age cannot be honoured within it: waiting it out would hold
            # the row, and its thread behind it, longer than max_age promises.
            outcome = state.outcome
            exc = outcome.exception() if outcome else None
            asked = exc.retry_after if isinstance(exc, RetryableDeliveryError) else None
            if asked is not None and now + asked - since >= retry.max_age:
                return True
            return now - since >= retry.max_age or self._stopping.is_set()

        return stop

    async def sleep(self, seconds: float, *, wake: Wake | None = None) -> None:
        """Sleep ``seconds``, or until the stop or ``wake`` completes, whichever comes first."""
        futures: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._sleep(seconds)),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        woken = asyncio.ensure_future(wake()) if wake is not None else None
        if woken is not None:
            futures.append(woken)
        try:
            waiting = set(futures)
            while waiting:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                # A wake that failed ends nothing early: the backoff holds.
                if done != {woken} or (woken is not None and woken.exception() is None):
                    break
        finally:
            # None outlives the wait: a sleep left running after a stop would hold its worker
            # (and a stand-in's count) for the rest of its backoff.
            for future in futures:
                future.cancel()
            await asyncio.gather(*futures, return_exceptions=True)
