"""The procedure: every target, one after the other, through the same three stages.

For each target, a fresh client process (and, for the bridge, a fresh state directory):

1. warm-up: ``warmup`` events at the offered rate, waited for (imports, file creation, caches);
2. latency: ``rate`` events/s for ``paced_seconds``, open loop; p50/p99 of send -> landed. The
   run is INVALID if the load generator did not offer that rate (``bench.pacing``);
3. throughput: a burst of events pushed as fast as the client takes them; events/s is the burst
   size over first send -> last landed.

Then the peak RSS (``VmHWM``) of the client, before it is stopped. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.events import Stage
from bench.machine import NOISY_CPUS, CpuMeter
from bench.pacing import PaceCheck, Pacer, check_pace
from bench.targets import BurstKind, Session, StartError, Target, settle


@dataclass(frozen=True, slots=True)
class Settings:
    rate: float = 1000.0
    paced_seconds: float = 10.0
    warmup: int = 500
    burst_baseline: int = 50_000
    burst_bridge: int = 20_000
    burst_webhook: int = 4_000
    seed_ids: int = 1_000_000
    concurrencies: tuple[int, ...] = (1, 16, 64)
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
                "webhook": self.burst_webhook}[kind]  # fmt: skip


FULL = Settings()
QUICK = Settings(
    paced_seconds=0.2,
    warmup=20,
    burst_baseline=300,
    burst_bridge=300,
    burst_webhook=100,
    seed_ids=20_000,
    stage_timeout=8.0,
    start_timeout=10.0,
    give_up_after=0.5,
)


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
    peak_rss_mb: float | None = None
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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latencies_ms(stage: Stage) -> list[float]:
    return [
        (landed - sent) / 1e6
        for sent, landed in zip(
            stage.sent_ns[: stage.sent], stage.landed_ns[: stage.sent], strict=True
        )
        if sent and landed
    ]


def _shortfall(stage: Stage, what: str) -> str | None:
    if stage.sent < stage.count:
        return f"{what}: only {stage.sent} of {stage.count} events were sent"
    if stage.landed < stage.sent:
        return f"{what}: only {stage.landed} of {stage.sent} events landed within the time limit"
    return None


def evaluate(m: Measurement, paced: Stage, burst: Stage, source_problem: str | None) -> None:
    """Fill ``m`` from the two measured stages."""
    lat = latencies_ms(paced)
    if lat:
        m.p50_ms, m.p99_ms = percentile(lat, 50), percentile(lat, 99)
    pace_problem = m.pace.problem if m.pace else "the paced stage did not run"
    m.latency_problem = pace_problem or _shortfall(paced, "latency run") or source_problem
    sent = [t for t in burst.sent_ns[: burst.sent] if t]
    landed = [t for t in burst.landed_ns[: burst.sent] if t]
    if sent and landed and max(landed) > min(sent):
        m.events_per_s = len(landed) / ((max(landed) - min(sent)) / 1e9)
    m.throughput_problem = _shortfall(burst, "throughput run") or source_problem
    duplicates = paced.duplicates + burst.duplicates
    if duplicates:
        m.notes.append(f"{duplicates} duplicate lines in the output")


async def _stages(session: Session, m: Measurement, s: Settings, stages: list[Stage]) -> None:
    warm, paced, burst = stages
    source, observer = session.source, session.observer
    meter = CpuMeter(session.process.pid)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(warm.count / s.rate + s.stage_timeout):
            await source.push_paced(warm, Pacer(s.rate, give_up_after=s.stage_timeout))
    if not await observer.wait(warm, s.stage_timeout):
        m.notes.append("warm-up events did not all land")
    pacer = Pacer(s.rate, give_up_after=s.give_up_after)
    with contextlib.suppress(TimeoutError):  # a stalled send shows as events not sent: INVALID
        async with asyncio.timeout(s.paced_seconds + s.stage_timeout):
            await source.push_paced(paced, pacer)
    m.pace = check_pace(paced, pacer, s.rate)
    await observer.wait(paced, s.stage_timeout)
    try:
        async with asyncio.timeout(s.stage_timeout):
            await source.push_burst(burst)
    except TimeoutError:
        m.notes.append(f"the burst was not taken within {s.stage_timeout:g}s")
    await observer.wait(burst, s.stage_timeout)
    m.peak_rss_mb = session.process.peak_rss_mb()
    m.other_cpus = meter.other_cpus()
    if m.other_cpus is not None and m.other_cpus > NOISY_CPUS:
        m.notes.append(f"other processes used {m.other_cpus:.2f} CPUs meanwhile: numbers are noisy")


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def measure(target: Target, settings: Settings, workdir: Path) -> Measurement:
    """Run the three stages against ``target``; problems become INVALID cells, never exceptions."""
    m = Measurement(target.key, target.label, target.is_bridge)
    _make_dir(workdir)
    stages = [
        Stage("w", settings.warmup),
        Stage("p", settings.paced_events),
        Stage("b", settings.burst_events(target.burst)),
    ]
    try:
        session = await target.open(workdir, within=settings.start_timeout)
    except StartError as exc:
        m.latency_problem = m.throughput_problem = f"did not start: {exc}"
        return m
    for stage in stages:
        session.observer.track(stage)
    try:
        await _stages(session, m, settings, stages)
    finally:
        await session.close()
    evaluate(m, stages[1], stages[2], session.source.problem)
    return m


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def summary(m: Measurement) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    flags = " (INVALID: see table)" if m.latency_problem or m.throughput_problem else ""
    return (
        f"{num(m.events_per_s, ',.0f')} events/s, p50 {num(m.p50_ms, '.2f')} ms, "
        f"p99 {num(m.p99_ms, '.2f')} ms, peak RSS {num(m.peak_rss_mb, '.1f')} MB{flags}"
    )


async def run_all(targets: list[Target], settings: Settings, root: Path) -> list[Measurement]:
    results = []
    for n, target in enumerate(targets, 1):
        log(f"[{n}/{len(targets)}] {target.label} ...")
        m = await measure(target, settings, root / target.key)
        log(f"[{n}/{len(targets)}] {target.label}: {summary(m)}")
        results.append(m)
        await settle()
    return results
