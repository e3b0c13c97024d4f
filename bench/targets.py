"""The configurations measured, one row of the table each.

A target starts its client subprocess and returns a :class:`Session`: a *source* that pushes events
(the load server's connection, or the webhook generator), an *observer* that sees them land, and the
process (for peak RSS). The WebSocket targets differ only in the command they run and in how their
events are observed; the webhook target differs in its source.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from bench import bridge_setup
from bench.events import Stage
from bench.observe import FileTail, Observer, ReceiptLog
from bench.pacing import Pacer
from bench.process import ClientProcess, python_module
from bench.webhook_load import WebhookLoad
from bench.wsserver import LoadServer, WsConnection

BurstKind = Literal["baseline", "bridge", "webhook"]


class StartError(Exception):
    """The client under test did not come up."""


class Source(Protocol):
    async def push_paced(self, stage: Stage, pacer: Pacer) -> None: ...

    async def push_burst(self, stage: Stage) -> None: ...

    async def close(self) -> None: ...

    @property
    def problem(self) -> str | None: ...


@dataclass
class Session:
    process: ClientProcess
    source: Source
    observer: Observer
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Stop the client in the order that lets it finish cleanly, then collect what it left."""
        try:
            if self.process.stop_by_signal:
                await self.process.stop()
                await self.source.close()
            else:
                await self.source.close()
                await self.process.stop()
            self.observer.finish()
        finally:
            for cleanup in self.cleanups:
                await cleanup()


class Target(abc.ABC):
    """One configuration: ``key`` is stable (JSON, tests), ``label`` is for people."""

    key: str
    label: str
    is_bridge = False
    burst: BurstKind = "baseline"
    """Which burst size of the settings this row's throughput run uses."""

    @abc.abstractmethod
    async def open(self, workdir: Path, *, within: float) -> Session:
        """Start the client and return once it can take events. Raises StartError."""


class WsTarget(Target):
    """A client of the load server's WebSocket."""

    stop_by_signal = False

    @abc.abstractmethod
    async def command(self, url: str, workdir: Path) -> list[str]:
        """Prepare what the client needs in ``workdir``; its command line."""

    @abc.abstractmethod
    def observer(self, conn: WsConnection, workdir: Path) -> FileTail | ReceiptLog: ...

    async def open(self, workdir: Path, *, within: float) -> Session:
        server = LoadServer()
        await server.start()
        try:
            argv = await self.command(server.url, workdir)
        except BaseException:
            await server.stop()
            raise
        process = ClientProcess(self.key, argv, workdir, stop_by_signal=self.stop_by_signal)
        try:
            process.start()
            conn = await _first_subscriber(server, process, within)
        except BaseException:
            await process.stop(exit_wait=0.0)
            await server.stop()
            raise
        observer = self.observer(conn, workdir)
        observer.start()
        return Session(process, conn, observer, cleanups=[server.stop])


async def _first_subscriber(
    server: LoadServer, process: ClientProcess, within: float
) -> WsConnection:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not process.alive():
            raise StartError(f"{process.name} exited before subscribing: {process.stderr_tail()}")
        try:
            return await server.next_subscriber(within=0.1)
        except TimeoutError:
            continue
    raise StartError(f"{process.name} did not subscribe within {within:g}s")


class BaselineA(WsTarget):
    key = "baseline-a"
    label = "baseline A: aiohttp, parse only"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return python_module("bench.baseline_a", url, workdir / "arrivals.bin")

    def observer(self, conn: WsConnection, workdir: Path) -> ReceiptLog:
        return ReceiptLog(conn, workdir / "arrivals.bin")


class BaselineB(WsTarget):
    key = "baseline-b"
    label = "baseline B: quickstart listener"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return python_module("bench.baseline_b", url, workdir / "out.jsonl")

    def observer(self, conn: WsConnection, workdir: Path) -> FileTail:
        return FileTail(workdir / "out.jsonl")


def bridge_argv(config: Path, profile: Path | None) -> list[str]:
    """``python -m bridge run``, under pyinstrument (a session file) when profiling."""
    if profile is None:
        return python_module("bridge", "run", "-c", config)
    return python_module("pyinstrument", "-r", "pyisession", "-o", profile, "-m", "bridge", "run",
                         "-c", config)  # fmt: skip


class BridgeWs(WsTarget):
    """``openmail-bridge run``: WebSocket -> durable spool -> file sink (fsync: batch)."""

    stop_by_signal = True  # it reconnects when the server closes: stop it with SIGTERM
    is_bridge = True
    burst: BurstKind = "bridge"

    def __init__(self, *, seed_ids: int = 0, profile: Path | None = None) -> None:
        self.seed_ids = seed_ids
        self.profile = profile
        self.key = "bridge-ws-seeded" if seed_ids else "bridge-ws"
        self.label = (
            f"bridge WS, {seed_ids:,} stored ids" if seed_ids else "bridge WS -> spool -> file"
        )

    async def command(self, url: str, workdir: Path) -> list[str]:
        files = bridge_setup.write_config(workdir, ws_url=url, webhook=False)
        if self.seed_ids:
            await asyncio.to_thread(bridge_setup.seed_seen, files.state, self.seed_ids)
        return bridge_argv(files.config, self.profile)

    def observer(self, conn: WsConnection, workdir: Path) -> FileTail:
        return FileTail(workdir / "out.jsonl")


class BridgeWebhook(Target):
    """``openmail-bridge run``: signed webhook POSTs at a fixed concurrency -> file sink."""

    is_bridge = True
    burst: BurstKind = "webhook"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.key = f"bridge-webhook-c{concurrency}"
        self.label = f"bridge webhook -> file, c={concurrency}"

    async def open(self, workdir: Path, *, within: float) -> Session:
        files = bridge_setup.write_config(workdir, ws_url=None, webhook=True)
        process = ClientProcess(self.key, bridge_argv(files.config, None), workdir,
                                stop_by_signal=True)  # fmt: skip
        try:
            process.start()
            port = await bridge_setup.webhook_port(process, within)
        except (TimeoutError, OSError, ValueError) as exc:
            await process.stop(exit_wait=0.0)
            raise StartError(f"{self.key}: {exc}: {process.stderr_tail()}") from None
        except BaseException:
            await process.stop(exit_wait=0.0)
            raise
        source = WebhookLoad(f"http://127.0.0.1:{port}/webhooks", bridge_setup.WEBHOOK_SECRET,
                             self.concurrency)  # fmt: skip
        tail = FileTail(files.sink)
        tail.start()
        return Session(process, source, tail)


def all_targets(seed_ids: int, concurrencies: tuple[int, ...]) -> list[Target]:
    """Every row, in table order: baselines first, as the ratios refer to them."""
    targets: list[Target] = [BaselineA(), BaselineB(), BridgeWs(), BridgeWs(seed_ids=seed_ids)]
    return targets + [BridgeWebhook(c) for c in concurrencies]


async def settle() -> None:
    """A short pause between runs, so one client's exit does not overlap the next one's start."""
    await asyncio.sleep(0.2)
