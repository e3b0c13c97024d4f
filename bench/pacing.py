"""Open-loop pacing at a fixed offered rate, and the check that the rate was actually offered.

Event ``i`` is due at ``start + i / rate``; a sender that falls behind catches up instead of
stretching the schedule, and gives up once it is ``give_up_after`` seconds late (the run is then
INVALID, never a slower "result"). Shared by the WebSocket server and the webhook generator.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.events import Stage

MIN_RATE_FRACTION = 0.97
"""The achieved send rate must reach this fraction of the offered rate for a valid run."""
MAX_LAG_MS = 50.0
"""No event may be sent later than this behind its schedule in a valid run."""


class Pacer:
    """Sleeps until each event is due; knows when the sender has fallen hopelessly behind."""

    def __init__(self, rate: float, *, give_up_after: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.interval_ns = int(1e9 / rate)
        self.give_up_ns = int(give_up_after * 1e9)
        self.start_ns = time.monotonic_ns() + 1_000_000  # 1 ms out: the first sleep is a real one

    def due(self, index: int) -> int:
        return self.start_ns + index * self.interval_ns

    async def wait(self, index: int) -> bool:
        """Sleep until event ``index`` is due; False when it is so late the run cannot be valid."""
        delay = self.due(index) - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        return -delay <= self.give_up_ns


@dataclass(frozen=True, slots=True)
class PaceCheck:
    """Whether the load generator offered the rate it was asked to."""

    offered: float
    achieved: float
    max_lag_ms: float
    sent: int
    planned: int

    @property
    def problem(self) -> str | None:
        if self.sent < self.planned:
            return (
                f"offered rate not reached: gave up after {self.sent} of {self.planned} events "
                f"({self.achieved:.0f}/s of {self.offered:.0f}/s)"
            )
        if self.achieved < MIN_RATE_FRACTION * self.offered:
            return f"offered rate not reached: {self.achieved:.0f}/s of {self.offered:.0f}/s"
        if self.max_lag_ms > MAX_LAG_MS:
            return f"sender fell {self.max_lag_ms:.0f} ms behind schedule (limit {MAX_LAG_MS:g} ms)"
        return None


def check_pace(stage: Stage, pacer: Pacer, rate: float) -> PaceCheck:
    """Achieved rate over the events actually sent, and the worst lateness against the schedule."""
    sent = [(i, t) for i, t in enumerate(stage.sent_ns[: stage.sent]) if t]
    if len(sent) < 2:
        return PaceCheck(rate, 0.0, 0.0, len(sent), stage.count)
    first = min(t for _, t in sent)
    last = max(t for _, t in sent)
    achieved = (len(sent) - 1) / ((last - first) / 1e9) if last > first else 0.0
    lag = max(t - pacer.due(i) for i, t in sent)
    return PaceCheck(rate, achieved, max(0.0, lag / 1e6), len(sent), stage.count)
