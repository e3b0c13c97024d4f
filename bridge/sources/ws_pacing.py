"""Client messages on one WebSocket connection, held to OpenMail's rate limit.

OpenMail closes a connection with 4029 once more than ``RATE_LIMIT_MESSAGES`` client messages
arrived within ``RATE_LIMIT_WINDOW`` seconds (protocol notes §5). A catch-up after a long absence
asks for one replay page of ``REPLAY_LIMIT`` events per message, as fast as the pages come, so
unpaced it crosses that line within seconds and starts over from a reconnect. Every message the
bridge sends on a connection (the subscribe, replay pages, pings) passes :meth:`Pacer.admit`
first: one sliding window counts them all, and a message that would exceed the limit is held
until the oldest one in the window has aged out of it.

The clock and the sleep are constructor arguments, so tests run a long catch-up without waiting
for it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

from bridge import protocol

PACE_SLACK: Final = 1.0
"""Seconds added to OpenMail's window. The server counts a message when it arrives: one held up
on the way arrives closer to the messages after it than it was sent, and must still not make the
window overflow."""


class Pacer:
    """The client messages of one connection, at most ``limit`` in any ``window`` seconds.

    Args:
        limit: messages allowed in one window (OpenMail's own limit by default).
        window: the window's length in seconds (OpenMail's, plus ``PACE_SLACK``).
        clock: monotonic seconds.
        sleep: how a hold is waited out.
    """

    def __init__(
        self,
        *,
        limit: int = protocol.RATE_LIMIT_MESSAGES,
        window: float = protocol.RATE_LIMIT_WINDOW + PACE_SLACK,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a pacer needs limit >= 1 and window > 0")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._turn = asyncio.Lock()  # messages are admitted in the order they asked
        self.holding = False
        """A message is being held back: the server may be silent because it waits for it."""

    def _delay(self, now: float) -> float:
        """How long until one more message fits in the window; 0 when it fits now."""
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) < self.limit:
            return 0.0
        return self._sent[0] + self.window - now

    async def admit(self, *wake: asyncio.Event) -> float | None:
        """Wait until one more message fits, and count it as sent now.

        Returns the seconds it was held (0.0 when it fitted at once), or None when one of
        ``wake`` was set during a hold (a stop, a new configuration): then nothing is counted
        and the message should not be sent.
        """
        async with self._turn:
            asked = now = self._clock()
            while (delay := self._delay(now)) > 0:
                self.holding = True
                try:
                    if not await self._hold(delay, wake):
                        return None
                finally:
                    self.holding = False
                now = self._clock()
            self._sent.append(now)
            return now - asked

    async def _hold(self, seconds: float, wake: tuple[asyncio.Event, ...]) -> bool:
        """Sleep ``seconds``; False when any of ``wake`` was set first."""
        sleeping = asyncio.ensure_future(self._sleep(seconds))
        waiters = [sleeping, *(asyncio.ensure_future(event.wait()) for event in wake)]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return sleeping.done() and not sleeping.cancelled()
