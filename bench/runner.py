"""The procedure: every target, one after the other, through the same three stages.

For each target, a fresh client process (and, for the bridge, a fresh state directory):

1. warm-up: ``warmup`` events at the offered rate, waited for (imports, file creation, caches);
2. latency: ``rate`` events/s for ``paced_seconds``, open loop; p50/p99 of send -> landed. The
   run is INVALID if the load generator did not offer that rate (``bench.pacing``);
3. throughput: a burst of events pushed as fast as the client takes them; events/s is the burst
   size over first send -> last landed.

Then the peak RSS (``VmHWM``) of the client, before it is stopped. Every wait is bounded. The
backlog row has a procedure of its own (``bench.backlog``). A row that cannot run on this machine
(the NATS rows without ``nats-server``) is skipped: its cells say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import backlog
from bench.events import Stage
from bench.machine import NOISY_CPUS, CpuMeter, process_seconds
from bench.measurement import Measurement
from bench.pacing import Pacer, check_pace
from bench.process import ClientProcess
from bench.settings import Settings
from bench.targets import BridgeBacklog, Session, StartError, Target, settle


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


def _cpu_seconds(client: Sequence[ClientProcess]) -> float:
    return sum(process_seconds(p.pid) for p in client)


def _cpu_us_per_event(
    client: Sequence[ClientProcess], cpu_before: float, stage: Stage
) -> float | None:
    """The client's CPU time since ``cpu_before`` per event of ``stage`` sent: a run that fell
    behind, or timed out, sent fewer than planned."""
    if not stage.sent:
        return None
    return (_cpu_seconds(client) - cpu_before) / stage.sent * 1e6


async def _stages(session: Session, m: Measurement, s: Settings, stages: list[Stage]) -> None:
    warm, paced, burst = stages
    source, observer = session.source, session.observer
    meter = CpuMeter(*session.pids())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(warm.count / s.rate + s.stage_timeout):
            await source.push_paced(warm, Pacer(s.rate, give_up_after=s.stage_timeout))
    if not await observer.wait(warm, s.stage_timeout):
        m.notes.append("warm-up events did not all land")
    pacer = Pacer(s.rate, give_up_after=s.give_up_after)
    client = session.client()
    cpu_before = _cpu_seconds(client)
    with contextlib.suppress(TimeoutError):  # a stalled send shows as events not sent: INVALID
        async with asyncio.timeout(s.paced_seconds + s.stage_timeout):
            await source.push_paced(paced, pacer)
    m.pace = check_pace(paced, pacer, s.rate)
    if await observer.wait(paced, s.stage_timeout):
        m.paced_cpu_us_per_event = _cpu_us_per_event(client, cpu_before, paced)
    cpu_before = _cpu_seconds(client)
    try:
        async with asyncio.timeout(s.stage_timeout):
            await source.push_burst(burst)
    except TimeoutError:
        m.notes.append(f"the burst was not taken within {s.stage_timeout:g}s")
    if await observer.wait(burst, s.stage_timeout):
        m.cpu_us_per_event = _cpu_us_per_event(client, cpu_before, burst)
    peaks = [p.peak_rss_mb() for p in client]
    m.peak_rss_mb = None if None in peaks else max(p for p in peaks if p is not None)
    if len(client) > 1:
        m.notes.append(
            "peak RSS "
            + ", ".join(f"{p.name} {_mb(v)}" for p, v in zip(client, peaks, strict=True))
        )
    m.other_cpus = meter.other_cpus()
    if m.other_cpus is not None and m.other_cpus > NOISY_CPUS:
        m.notes.append(f"other processes used {m.other_cpus:.2f} CPUs meanwhile: numbers are noisy")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


async def measure(target: Target, settings: Settings, workdir: Path) -> Measurement:
    """Run the three stages against ``target``; problems become INVALID cells, never exceptions."""
    m = Measurement(target.key, target.label, target.is_bridge)
    skipped = target.unavailable()
    if skipped is not None:
        m.latency_problem = m.throughput_problem = f"skipped: {skipped}"
        return m
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
    timing = (
        f"p50 {num(m.p50_ms, '.2f')} ms, p99 {num(m.p99_ms, '.2f')} ms"
        if m.latency_measured
        else f"drain {num(m.drain_s, '.2f')} s"
    )
    return (
        f"{num(m.events_per_s, ',.0f')} events/s, {timing}, "
        f"peak RSS {num(m.peak_rss_mb, '.1f')} MB{flags}"
    )


async def run_all(targets: list[Target], settings: Settings, root: Path) -> list[Measurement]:
    results = []
    for n, target in enumerate(targets, 1):
        log(f"[{n}/{len(targets)}] {target.label} ...")
        workdir = root / target.key
        _make_dir(workdir)
        if isinstance(target, BridgeBacklog):
            m = await backlog.measure(target, settings, workdir, log)
        else:
            m = await measure(target, settings, workdir)
        log(f"[{n}/{len(targets)}] {target.label}: {summary(m)}")
        results.append(m)
        await settle()
    return results
