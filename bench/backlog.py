"""The backlog row: how fast the bridge drains a spool that filled while its hook was down.

1. the bridge starts with an HTTP sink whose receiver answers 503;
2. ``Settings.backlog`` events are pushed through the WebSocket as fast as the bridge takes them;
   the bridge's ``/metrics`` (events received from the WebSocket) tells when every one is stored;
3. the receiver switches to 200; the drain time runs from that switch to the receipt of the last
   event, and events/s is the backlog over the drain time.

Peak RSS is the process's high-water mark over both phases; each phase's own peak is noted (the
mark is reset between them). Each wait is bounded by ``Settings.backlog_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import aiohttp

from bench.events import Stage
from bench.machine import NOISY_CPUS, CpuMeter
from bench.measurement import Measurement
from bench.settings import Settings
from bench.targets import BridgeBacklog, Session, StartError
from bridge import metrics
from bridge.events import Origin

STORED_RE: Final = re.compile(
    rf'^{metrics.PREFIX}_events_received_total\{{source="{Origin.WEBSOCKET}"\}} (\S+)$'.encode(),
    re.MULTILINE,
)
"""The counter of events the bridge has stored from the WebSocket, in its ``/metrics``."""
SCRAPE_EVERY: Final = 0.25


async def stored_events(url: str) -> int:
    """The bridge's count of events stored from the WebSocket (0 before the first)."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        match = STORED_RE.search(await response.read())
    return int(float(match.group(1))) if match else 0


async def wait_stored(url: str, count: int, within: float) -> int:
    """Scrape until ``count`` events are stored or ``within`` seconds passed; the last count."""
    deadline = time.monotonic() + within
    stored = await stored_events(url)
    while stored < count and time.monotonic() < deadline:
        await asyncio.sleep(SCRAPE_EVERY)
        stored = await stored_events(url)
    return stored


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


async def _phases(
    target: BridgeBacklog,
    session: Session,
    m: Measurement,
    s: Settings,
    stage: Stage,
    progress: Callable[[str], None],
) -> None:
    process, limit = session.process, s.backlog_timeout()
    meter = CpuMeter(*session.pids())
    admin_port = await process.listening_port("admin.listening", s.start_timeout)
    started = time.monotonic()
    with contextlib.suppress(TimeoutError):  # events not sent show in stage.sent
        async with asyncio.timeout(limit):
            await session.source.push_burst(stage)
    stored = await wait_stored(f"http://127.0.0.1:{admin_port}/metrics", stage.sent, limit)
    progress(f"{stored:,} events stored in {time.monotonic() - started:.1f}s; draining ...")
    ingest_peak = process.peak_rss_mb()
    reset = process.reset_peak_rss()
    accepted_ns = await target.receiver.accept()
    await session.observer.wait(stage, limit)
    drain_peak = process.peak_rss_mb()
    m.peak_rss_mb = max((v for v in (ingest_peak, drain_peak) if v is not None), default=None)
    if reset:
        m.notes.append(f"peak RSS storing {_mb(ingest_peak)}, draining {_mb(drain_peak)}")
    m.other_cpus = meter.other_cpus()
    if m.other_cpus is not None and m.other_cpus > NOISY_CPUS:
        m.notes.append(f"other processes used {m.other_cpus:.2f} CPUs meanwhile: numbers are noisy")
    landed = [t for t in stage.landed_ns if t]
    if landed and max(landed) > accepted_ns:
        m.drain_s = (max(landed) - accepted_ns) / 1e9
        m.events_per_s = len(landed) / m.drain_s
    if stage.sent < stage.count:
        m.throughput_problem = f"only {stage.sent:,} of {stage.count:,} events were sent"
    elif stored < stage.sent:
        m.throughput_problem = f"only {stored:,} of {stage.sent:,} events stored within {limit:g}s"
    elif stage.landed < stage.sent:
        m.throughput_problem = (
            f"only {stage.landed:,} of {stage.sent:,} events drained within {limit:g}s"
        )


async def measure(
    target: BridgeBacklog, settings: Settings, workdir: Path, progress: Callable[[str], None]
) -> Measurement:
    """Fill a backlog, drain it; problems become INVALID cells, never exceptions."""
    m = Measurement(target.key, target.label, target.is_bridge, latency_measured=False)
    stage = Stage("k", settings.backlog)
    try:
        session = await target.open(workdir, within=settings.start_timeout)
    except StartError as exc:
        m.throughput_problem = f"did not start: {exc}"
        return m
    session.observer.track(stage)
    try:
        await _phases(target, session, m, settings, stage, progress)
    except (TimeoutError, OSError, aiohttp.ClientError) as exc:
        m.throughput_problem = f"the run broke off: {type(exc).__name__}: {exc}"
    finally:
        await session.close()
    if stage.duplicates:
        m.notes.append(f"{stage.duplicates} events received more than once")
    return m
