"""One row's numbers, as measured; ``bench.report`` derives the ratios and verdicts from them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.pacing import PaceCheck


@dataclass
class Measurement:
    """One row's numbers; a ``*_problem`` makes the matching numbers INVALID (kept for the JSON)."""

    key: str
    label: str
    is_bridge: bool
    events_per_s: float | None = None
    throughput_problem: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_problem: str | None = None
    pace: PaceCheck | None = None
    latency_measured: bool = True
    """False for a row without a run at the offered rate (the backlog drain): no latency."""
    drain_s: float | None = None
    """The backlog row: from the hook starting to answer 200 to the last event received."""
    peak_rss_mb: float | None = None
    cpu_us_per_event: float | None = None
    """CPU time the client under test spent per event of the burst (all its threads): less noisy
    than events/s on a shared machine, and what a busy host pays per email."""
    paced_cpu_us_per_event: float | None = None
    """The same at the offered rate (the latency run): what the row's p99 has for headroom. Per-
    event costs are larger here than in a burst, each event paying for its own wake-ups and
    transactions."""
    other_cpus: float | None = None
    """CPUs busy in other processes while the row ran (``bench.machine``)."""
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float | None:
        """events/s when valid, else None."""
        return None if self.throughput_problem else self.events_per_s

    @property
    def p99(self) -> float | None:
        return None if self.latency_problem else self.p99_ms

    def as_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["pace"] = dataclasses.asdict(self.pace) if self.pace else None
        return data
