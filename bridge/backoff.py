"""Backoff: the one retry-delay formula of the bridge, and the WebSocket's reconnect policy.

``full_jitter`` is used by every retry schedule (sink deliveries in ``bridge/delivery.py``,
WebSocket reconnects here), so both follow the same curve. ``ReconnectPolicy`` adds what a
connection meant to stay open needs on top: the cap for causes that retrying sooner cannot mend,
and a fresh curve once a connection stayed up a while. Its clock, random source and sleep are
constructor arguments, so tests run the curve without waiting for it.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

from bridge.config import ReconnectConfig

Uniform = Callable[[float, float], float]
"""A random source: a number drawn uniformly between its two arguments."""

AT_CAP_SPREAD: Final = 0.8
"""At the cap a delay is drawn from [0.8 * cap, cap]: many bridges rejected at once (a revoked
key, an outage) do not all come back in the same second."""
RATE_LIMIT_FLOOR: Final = 8
"""After a rate limit (4029) the delay is at least this many ``initial`` delays (within the cap):
the server asked for fewer messages, and an immediate reconnect sends another subscribe."""


def full_jitter(
    attempt: int, initial: float, cap: float, uniform: Uniform = random.uniform
) -> float:
    """The delay before retry ``attempt`` (1 for the first retry): exponential with full jitter,
    drawn from [0, min(cap, initial * 2^(attempt-1))].

    Full jitter spreads clients that failed together over the whole window, so they do not retry
    in step against a peer that is just coming back.
    """
    exponent = max(attempt - 1, 0)
    if initial <= 0 or cap <= 0:
        high = 0.0
    elif exponent > math.log2(cap) - math.log2(initial):
        high = cap  # past the cap: also keeps 2**exponent from overflowing after many attempts
    else:
        high = min(initial * 2.0**exponent, cap)
    return uniform(0.0, high)


class Pace(enum.Enum):
    """How soon to reconnect after a connection ended, by what ended it."""

    NORMAL = "normal"
    """The next delay of the exponential curve."""
    SLOWER = "slower"
    """The curve, but never less than ``RATE_LIMIT_FLOOR`` initial delays: rate limited."""
    AT_CAP = "at_cap"
    """Near the cap every time: a rejected key or too many connections, which no retry mends
    sooner; OpenMail's own clients exit there, and a daemon must not."""
    NOW = "now"
    """No delay: the wait that mattered (for room in the spool) already happened."""


class ReconnectPolicy:
    """When to reconnect. One per connection loop; ``settings`` may be replaced (SIGHUP).

    Args:
        settings: ``initial``, ``max`` (the cap) and ``reset_after``.
        clock: a monotonic clock, for how long a connection stayed up.
        uniform: the random source of the jitter.
        sleep: how a delay is waited out.
    """

    __slots__ = ("_clock", "_sleep", "_uniform", "_up_since", "attempt", "settings")

    def __init__(
        self,
        settings: ReconnectConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        uniform: Uniform = random.uniform,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._uniform = uniform
        self._sleep = sleep
        self._up_since: float | None = None
        self.attempt = 0
        """Connections that failed since the curve last started over."""

    def up(self) -> None:
        """A connection is established: the time it stays up starts now."""
        self._up_since = self._clock()

    def ended(self) -> bool:
        """The connection ended. True when it had stayed up ``reset_after``: the curve starts over
        (the caller pauses ``settle_delay()``); else the next failure takes the next delay."""
        up_since, self._up_since = self._up_since, None
        if up_since is None or self._clock() - up_since < self.settings.reset_after:
            return False
        self.reset()
        return True

    def reset(self) -> None:
        """Start the curve over: the next failure waits about ``initial`` again."""
        self.attempt = 0

    def next_delay(self, pace: Pace) -> float:
        """The delay before reconnecting after one more failed connection."""
        self._up_since = None
        self.attempt += 1
        cfg = self.settings
        if pace is Pace.AT_CAP:
            return cfg.max * self._uniform(AT_CAP_SPREAD, 1.0)
        if pace is Pace.NOW:
            return 0.0
        delay = full_jitter(self.attempt, cfg.initial, cfg.max, self._uniform)
        if pace is Pace.SLOWER:
            delay = max(delay, min(cfg.max, cfg.initial * RATE_LIMIT_FLOOR))
        return delay

    def settle_delay(self) -> float:
        """The short pause after a long-lived connection ended: up to one ``initial`` delay, so
        bridges dropped together by a server restart do not all reconnect in the same instant."""
        return self._uniform(0.0, self.settings.initial)

    async def sleep(self, seconds: float, *wake: asyncio.Event) -> None:
        """Wait ``seconds``, or until any of ``wake`` is set (a stop, a new configuration)."""
        waiters = [
            asyncio.ensure_future(self._sleep(seconds)),
            *(asyncio.ensure_future(event.wait()) for event in wake),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
