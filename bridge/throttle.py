"""A log throttle: the first occurrence of a noisy condition is logged, then at most one line per
interval carrying how many were left out, so a hostile peer cannot flood the journal while the
metrics still count every occurrence.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Throttle:
    """Decides whether one more occurrence of a condition gets a log line."""

    __slots__ = ("_clock", "_interval", "_last", "_suppressed")

    def __init__(self, interval: float = 60.0, *, clock: Callable[[], float] = time.monotonic):
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def admit(self) -> int | None:
        """None when this occurrence stays silent; else how many were silent before it."""
        now = self._clock()
        # A clock stepped back (a wall clock) admits at once, rather than silence for the step.
        if self._last is not None and 0 <= now - self._last < self._interval:
            self._suppressed += 1
            return None
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed

    def admit_fields(self, count_field: str) -> dict[str, int] | None:
        """:meth:`admit` as a log line's fields: None when silent; else ``{count_field: n}``
        when ``n`` occurrences were silent before this one, ``{}`` when none were."""
        suppressed = self.admit()
        if suppressed is None:
            return None
        return {count_field: suppressed} if suppressed else {}
