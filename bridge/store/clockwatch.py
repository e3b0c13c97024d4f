"""Noticing the wall clock step: what the store deletes by age must not follow a wrong clock.

A clock stepped forward (a mis-set NTP server, a VM restored from a snapshot) would make every
remembered event id look older than the dedup window, and one prune round would forget them all:
OpenMail's next redelivery of an event already delivered would go to the agent again. The
monotonic clock never steps, so a wall clock that moved more than it, or less, has been stepped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

TOLERANCE: Final = 300.0
"""Seconds the wall clock may drift from the monotonic one between two looks before it counts as
stepped: NTP slews far less."""


class ClockWatch:
    """Compares the wall clock with the monotonic one at each :meth:`stepped`."""

    __slots__ = ("_last", "_monotonic", "_wall")

    def __init__(
        self, wall: Callable[[], float], monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._last = (wall(), monotonic())

    def stepped(self) -> float | None:
        """Seconds the wall clock was stepped (forward: positive) since the last look, or None
        when it moved with the monotonic clock."""
        wall, mono = self._wall(), self._monotonic()
        last_wall, last_mono = self._last
        self._last = (wall, mono)
        step = (wall - last_wall) - (mono - last_mono)
        return step if abs(step) > TOLERANCE else None
