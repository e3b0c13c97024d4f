"""Helpers for the fault scenarios in ``test_faults.py``: a subprocess bridge that can be killed and
restarted on the same state, a steady event emitter, exact-set checks, RSS sampling and the disk
tricks (tmpfs, immutable files) with guaranteed clean-up.

Everything here waits with a bound; nothing sleeps without a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from conftest import (
    BridgeProcess,
    Receiver,
    start_bridge_process,
    wait_until,
    write_config,
)

from bridge.simulator import Simulator

SEED_ENV = "OPENMAIL_FAULT_SEED"


def scenario_seed(name: str) -> tuple[int, random.Random]:
    """The run's seed (``$OPENMAIL_FAULT_SEED`` or the clock), printed, and a per-scenario RNG."""
    raw = os.environ.get(SEED_ENV)
    seed = int(raw) if raw else time.time_ns() % 1_000_000_007
    print(f"[{name}] seed={seed} (replay with {SEED_ENV}={seed})")
    return seed, random.Random(f"{seed}:{name}")


# --- the bridge under test -----------------------------------------------------------------------


class Bridge:
    """``python -m bridge run -c FILE`` on one config and one state, started as often as needed.

    Every run's stderr is kept; :meth:`logs` reads them all in order, so a diagnosis sees the
    whole history across kills and restarts.
    """

    def __init__(self, config_path: Path, config: dict[str, Any], procs: list[BridgeProcess]):
        self.config_path = write_config(config_path, config)
        self.config = config
        self._procs = procs
        self.runs: list[BridgeProcess] = []
        self.webhook_port: int | None = None
        self.admin_port: int | None = None
        self.started_at = 0.0

    @property
    def current(self) -> BridgeProcess:
        return self.runs[-1]

    @property
    def pid(self) -> int:
        return self.current.proc.pid

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.webhook_port}/webhooks"

    async def start(self, timeout: float = 20.0) -> BridgeProcess:
        bp = start_bridge_process(self.config_path)
        self._procs.append(bp)
        self.runs.append(bp)
        deadline = time.monotonic() + timeout
        while True:
            started = {e.get("event"): e for e in _parse(bp.stderr_path)}
            if "bridge.started" in started:
                self.webhook_port = _port(started.get("webhook.listening"))
                self.admin_port = _port(started.get("admin.listening"))
                self.started_at = time.time()
                return bp
            if bp.proc.poll() is not None:
                raise AssertionError(
                    f"bridge exited with {bp.proc.returncode} before starting:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"bridge not started within {timeout}s:\n{self.tail()}")
            await asyncio.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no drain, no clean close; the state is what the disk holds."""
        proc = self.current.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def logs(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for run in self.runs:
            out.extend(_parse(run.stderr_path))
        return out

    def log_events(self, name: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("event") == name]

    def tail(self, lines: int = 40) -> str:
        """The end of the current run's stderr, for assertion messages."""
        if not self.runs:
            return "(never started)"
        text = self.current.stderr_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def rss_kib(self) -> int | None:
        """The bridge's resident set size from /proc (KiB), None once it is gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return None


def _parse(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def _port(entry: dict[str, Any] | None) -> int | None:
    if not entry or "listen" not in entry:
        return None
    return int(str(entry["listen"]).rsplit(":", 1)[1])


# --- receivers -----------------------------------------------------------------------------------


@dataclass
class SlowReceiver(Receiver):
    """A :class:`Receiver` whose answers take a random time in ``delay_range`` (a slow agent)."""

    rng: random.Random = field(default_factory=random.Random)
    delay_range: tuple[float, float] = (0.005, 0.02)

    async def _handle(self, request: web.Request) -> web.Response:
        pause = self.rng.uniform(*self.delay_range)
        self.delay = pause
        return await super()._handle(request)


# --- driving the simulator -----------------------------------------------------------------------


@dataclass
class Emitter:
    """Injects ``message.received`` events at a steady rate; remembers their ids and threads.

    Threads are drawn from a fixed pool so per-thread order can be checked afterwards.
    """

    sim: Simulator
    rng: random.Random
    threads: Sequence[str] = ()
    body_size: int = 0
    ids: list[str] = field(default_factory=list)
    thread_of: dict[str, str] = field(default_factory=dict)

    async def emit_one(self) -> str:
        kwargs: dict[str, Any] = {}
        if self.threads:
            kwargs["thread_id"] = self.rng.choice(self.threads)
        if self.body_size:
            kwargs["message"] = {"body_text": "x" * self.body_size}
        payload = self.sim.message_event(**kwargs)
        event_id = str(payload["event_id"])
        # Recorded before inject: the event exists upstream from this moment on.
        self.ids.append(event_id)
        self.thread_of[event_id] = str(payload["thread_id"])
        await self.sim.inject(payload)
        return event_id

    async def run(
        self, rate: float, *, count: int | None = None, duration: float | None = None
    ) -> list[str]:
        """Emit at ``rate``/s until ``count`` events or ``duration`` seconds; returns their ids."""
        if count is None and duration is None:
            raise ValueError("give count or duration")
        start = time.monotonic()
        emitted: list[str] = []
        n = 0
        while (count is None or n < count) and (
            duration is None or time.monotonic() - start < duration
        ):
            emitted.append(await self.emit_one())
            n += 1
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return emitted


def channel_counts(sim: Simulator) -> Counter[str]:
    out: Counter[str] = Counter()
    for r in sim.deliveries:
        key = r.channel if r.channel != "webhook" else f"webhook:{r.status}"
        out[key] += 1
    return out


def subscribed(sim: Simulator) -> bool:
    return any(info.subscribed for info in sim.connections)


# --- checks --------------------------------------------------------------------------------------


def file_ids(path: Path) -> list[str]:
    ids: list[str] = []
    if not path.exists():
        return ids
    for line in path.read_text().splitlines():
        if line.strip():
            ids.append(str(json.loads(line)["event_id"]))
    return ids


def exactly_once_problems(got: Sequence[str], expected: set[str]) -> str | None:
    """None when ``got`` holds every expected id exactly once and nothing else; else the diff."""
    counts = Counter(got)
    missing = sorted(expected - counts.keys())
    unexpected = sorted(counts.keys() - expected)
    doubled = {k: v for k, v in sorted(counts.items()) if v > 1}
    if not (missing or unexpected or doubled):
        return None
    return (
        f"{len(missing)} missing {missing[:25]}; {len(unexpected)} unexpected {unexpected[:10]}; "
        f"{len(doubled)} duplicated {dict(list(doubled.items())[:25])}"
    )


def order_violations(
    received: Sequence[str], thread_of: dict[str, str], position: dict[str, int]
) -> list[str]:
    """Per thread, pairs received out of acceptance order (first receipt of each id counts)."""
    last: dict[str, tuple[int, str]] = {}
    seen: set[str] = set()
    problems = []
    for event_id in received:
        if event_id in seen:
            continue
        seen.add(event_id)
        thread = thread_of[event_id]
        pos = position[event_id]
        if thread in last and last[thread][0] > pos:
            problems.append(f"{thread}: {event_id} after {last[thread][1]}")
        if thread not in last or last[thread][0] < pos:
            last[thread] = (pos, event_id)
    return problems


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# --- disk trouble --------------------------------------------------------------------------------


def run_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[str | None]:
    """Mount a tmpfs of ``size`` on ``path``; yields None, or why mounting was refused.

    Always unmounted on the way out (lazily if something still holds it).
    """
    path.mkdir(parents=True, exist_ok=True)
    done = run_cmd("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if done.returncode != 0:
        yield f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}"
        return
    try:
        yield None
    finally:
        if run_cmd("umount", str(path)).returncode != 0:
            run_cmd("umount", "-l", str(path))


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full (ENOSPC); returns the bytes written."""
    written = 0
    chunk = 1 << 20
    with path.open("wb", buffering=0) as f:
        while chunk >= 512:
            try:
                written += f.write(b"\0" * chunk)
            except OSError:
                chunk //= 2
    return written


@contextlib.contextmanager
def immutable(paths: Sequence[Path]) -> Iterator[str | None]:
    """``chattr +i`` the files; yields None, or why the filesystem refused. Always undone."""
    done: list[Path] = []
    try:
        for p in paths:
            result = run_cmd("chattr", "+i", str(p))
            if result.returncode != 0:
                yield f"chattr +i {p} refused: {result.stderr.strip() or result.returncode}"
                return
            done.append(p)
        yield None
    finally:
        for p in done:
            run_cmd("chattr", "-i", str(p))


async def eventually(predicate: Any, timeout: float, interval: float = 0.1) -> bool:
    """Like ``wait_until`` but answers False on timeout, so the exact-set assertions that follow
    report what is missing instead of a bare timeout."""
    try:
        await wait_until(predicate, timeout=timeout, interval=interval)
    except AssertionError:
        return False
    return True


async def admin_get(bridge: Bridge, path: str) -> Any:
    """GET the running bridge's admin endpoint (``/status``, ``/readyz``) as JSON."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{bridge.admin_port}{path}") as response,
    ):
        return await response.json()


async def settled(sim: Simulator, bridge: Bridge) -> bool:
    """No webhook still being retried upstream, no delivery pending in the bridge."""
    if sim.pending_webhooks:
        return False
    status = await admin_get(bridge, "/status")
    return all(entry["pending"] == 0 for entry in status["sinks"].values())


def trace(event_ids: Sequence[str], sim: Simulator, bridge: Bridge, limit: int = 5) -> str:
    """What the simulator and the bridge's logs say about a few events: for failure messages."""
    lines = []
    logs = bridge.logs()
    for event_id in list(event_ids)[:limit]:
        records = [
            f"{r.channel}#{r.attempt} status={r.status} err={r.error} replay={r.replay} "
            f"conn={r.connection_id} t={r.at:.3f}"
            for r in sim.deliveries
            if r.event_id == event_id
        ]
        said = [
            f"{e.get('timestamp')} {e.get('event')} "
            + " ".join(f"{k}={v}" for k, v in e.items() if k not in ("timestamp", "event", "level"))
            for e in logs
            if event_id in str(e.values())
        ]
        lines.append(f"  {event_id}: simulator {records}; bridge log {said[:8]}")
    return "\n".join(lines)


def log_time(entry: dict[str, Any]) -> float:
    """A bridge log entry's ISO timestamp as Unix time."""
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


def logged_between(bridge: Bridge, name: str, start: float, end: float) -> list[dict[str, Any]]:
    return [e for e in bridge.log_events(name) if start <= log_time(e) <= end]
