"""A clock and a sleep on it, for code that waits for a time (a rate limit's hold, a debounce
window, a retry): a sleep ends only when the test moves the clock past its end, so a test sees
exactly what happens before a time and what happens at it, without waiting for either."""

from __future__ import annotations

import asyncio

START = 1_000_000.0


class FakeTime:
    def __init__(self, now: float = START) -> None:
        self.now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        entry = (self.now + seconds, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            self._sleepers.remove(entry)

    def sleeping_until(self) -> list[float]:
        """When the sleeps in progress end, earliest first."""
        return sorted(end for end, _ in self._sleepers)

    def advance_to(self, when: float) -> None:
        assert when >= self.now, "time only moves forward"
        self.now = when
        for end, future in self._sleepers:
            # A sleep computed as (t - now) may end a rounding error after t.
            if end <= when + 1e-6 and not future.done():
                future.set_result(None)
