"""How much each run measures: the offered rate, the stage sizes, the time limits.

``FULL`` is ``make bench``; ``QUICK`` (``--quick``) uses tiny counts and checks the harness only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BurstKind = Literal["baseline", "bridge", "forwarder", "webhook"]
"""Which burst size of the settings a row's throughput run uses."""


@dataclass(frozen=True, slots=True)
class Settings:
    rate: float = 1000.0
    paced_seconds: float = 10.0
    warmup: int = 500
    burst_baseline: int = 50_000
    burst_bridge: int = 20_000
    burst_forwarder: int = 20_000
    burst_webhook: int = 4_000
    seed_ids: int = 1_000_000
    concurrencies: tuple[int, ...] = (1, 16, 64)
    backlog: int = 200_000
    """Events stored while the hook refuses them, then drained (the backlog row)."""
    backlog_min_rate: float = 200.0
    """The backlog row stops waiting once ingest or drain is slower than this (events/s)."""
    stage_timeout: float = 90.0
    start_timeout: float = 30.0
    give_up_after: float = 1.0
    """A paced sender this late (seconds) stops: the offered rate is out of reach."""

    @property
    def paced_events(self) -> int:
        return max(2, round(self.rate * self.paced_seconds))

    def burst_events(self, kind: BurstKind) -> int:
        """Events in a throughput run: sized so that each lasts a second or more at full speed."""
        return {"baseline": self.burst_baseline, "bridge": self.burst_bridge,
                "forwarder": self.burst_forwarder, "webhook": self.burst_webhook}[kind]  # fmt: skip

    def backlog_timeout(self) -> float:
        """The bound on each half (ingest, drain) of the backlog row."""
        return self.stage_timeout + self.backlog / self.backlog_min_rate


FULL = Settings()
QUICK = Settings(
    paced_seconds=0.2,
    warmup=20,
    burst_baseline=300,
    burst_bridge=300,
    burst_forwarder=300,
    burst_webhook=100,
    seed_ids=20_000,
    backlog=300,
    stage_timeout=8.0,
    start_timeout=10.0,
    give_up_after=0.5,
)
