"""The configurations measured, one row of the table each.

A target starts its client subprocess and returns a :class:`Session`: a *source* that pushes events
(the load server's connection, or the webhook generator), an *observer* that sees them land, and the
process (for peak RSS). The WebSocket targets differ only in the command they run and in how their
events are observed; the webhook target differs in its source. The HTTP-forwarding targets (baseline
C, the bridge with an HTTP sink, the backlog drain) also start the hook receiver and observe the
events there. The NATS targets (baseline D, the bridge with a NATS sink, an edge and a sidecar
bridge) also start the run's own nats-server and observe the events in the stream, or in the
sidecar's file.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import nats.errors

from bench import bridge_setup, jetstream
from bench.events import Stage
from bench.observe import FileTail, Observer, ReceiptLog, ReceiptTail
from bench.pacing import Pacer
from bench.process import ClientProcess, python_module
from bench.receiver import ReceiverProcess
from bench.settings import BurstKind, Settings
from bench.webhook_load import WebhookLoad
from bench.wsserver import LoadServer, WsConnection

BASE_A: Final = "baseline-a"
BASE_B: Final = "baseline-b"
BASE_C: Final = "baseline-c"
WS: Final = "bridge-ws"
WS_SEEDED: Final = "bridge-ws-seeded"
WS_HTTP: Final = "bridge-ws-http"
BACKLOG: Final = "bridge-backlog"
BASE_D: Final = "baseline-d"
BASE_W: Final = "baseline-w"
WEBHOOK_BASE_CONCURRENCY: Final = 16
"""Baseline W's concurrency: that of the webhook row the latency target names."""
WS_NATS: Final = "bridge-ws-nats"
NATS_E2E: Final = "bridge-nats-e2e"
OUT_FILE: Final = "out.jsonl"
"""The file sink's file, and baseline B's."""


_WEBHOOK_ROW: Final = "bridge-webhook-c"


def webhook_key(concurrency: int) -> str:
    return f"{_WEBHOOK_ROW}{concurrency}"


def is_webhook(key: str) -> bool:
    """Whether the row ``key`` sends signed webhook POSTs (baseline W and the bridge's rows)."""
    return key == BASE_W or key.startswith(_WEBHOOK_ROW)


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
    helpers: list[ClientProcess] = field(default_factory=list)
    """Other processes of the measurement (the hook receiver): their CPU is not noise."""
    partners: list[ClientProcess] = field(default_factory=list)
    """Other processes of the client under test (the sidecar bridge): their CPU counts in the
    row's CPU per event, their peak RSS in its peak RSS."""

    def client(self) -> tuple[ClientProcess, ...]:
        return (self.process, *self.partners)

    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in (*self.client(), *self.helpers))

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

    def unavailable(self) -> str | None:
        """Why this row cannot run on this machine (it is then skipped), else None."""
        return None


class WsTarget(Target):
    """A client of the load server's WebSocket."""

    stop_by_signal = False

    @abc.abstractmethod
    async def command(self, url: str, workdir: Path) -> list[str]:
        """Prepare what the client needs in ``workdir``; its command line."""

    @abc.abstractmethod
    def observer(self, conn: WsConnection, workdir: Path) -> Observer: ...

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


class HookTarget(WsTarget):
    """A WebSocket client that POSTs every event to the hook receiver, where it is observed.

    The receiver runs in its own process, started before the client and stopped after it.
    """

    secret: str | None = None
    """The receiver checks OpenMail signatures under this secret."""
    refuse = False
    """The receiver answers 503 until it is switched (``ReceiverProcess.accept``)."""
    receiver: ReceiverProcess
    """The receiver of the session last opened."""

    async def open(self, workdir: Path, *, within: float) -> Session:
        receiver = ReceiverProcess(workdir, secret=self.secret, refuse=self.refuse)
        try:
            await receiver.start(within)
        except TimeoutError as exc:
            raise StartError(f"{exc}: {receiver.process.stderr_tail()}") from None
        self.receiver = receiver
        try:
            session = await super().open(workdir, within=within)
        except BaseException:
            await receiver.stop()
            raise
        session.cleanups.append(receiver.stop)
        session.helpers.append(receiver.process)
        return session

    def observer(self, conn: WsConnection, workdir: Path) -> ReceiptTail:
        return ReceiptTail(self.receiver.receipts)


class BaselineA(WsTarget):
    key = BASE_A
    label = "baseline A: aiohttp, parse only"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return python_module("bench.baseline_a", url, workdir / "arrivals.bin")

    def observer(self, conn: WsConnection, workdir: Path) -> ReceiptLog:
        return ReceiptLog(conn, workdir / "arrivals.bin")


class BaselineB(WsTarget):
    key = BASE_B
    label = "baseline B: quickstart listener"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return python_module("bench.baseline_b", url, workdir / OUT_FILE)

    def observer(self, conn: WsConnection, workdir: Path) -> FileTail:
        return FileTail(workdir / OUT_FILE)


class BaselineC(HookTarget):
    key = BASE_C
    label = "baseline C: forwarder, one POST at a time"
    burst: BurstKind = "forwarder"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return python_module("bench.baseline_c", url, self.receiver.hook_url)


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
        self.key = WS_SEEDED if seed_ids else WS
        self.label = (
            f"bridge WS, {seed_ids:,} stored ids" if seed_ids else "bridge WS -> spool -> file"
        )

    async def command(self, url: str, workdir: Path) -> list[str]:
        sink = bridge_setup.file_sink(workdir / OUT_FILE)
        files = bridge_setup.write_config(workdir, ws_url=url, webhook=False, sink=sink)
        if self.seed_ids:
            await asyncio.to_thread(bridge_setup.seed_seen, files.state, self.seed_ids)
        return bridge_argv(files.config, self.profile)

    def observer(self, conn: WsConnection, workdir: Path) -> FileTail:
        return FileTail(workdir / OUT_FILE)


class BridgeWsHttp(HookTarget):
    """``openmail-bridge run``: WebSocket -> durable spool -> HTTP sink, re-signed, to the
    receiver (which checks the signature)."""

    key = WS_HTTP
    label = "bridge WS -> spool -> HTTP"
    stop_by_signal = True
    is_bridge = True
    burst: BurstKind = "forwarder"
    secret = bridge_setup.HOOK_SECRET

    async def command(self, url: str, workdir: Path) -> list[str]:
        sink = bridge_setup.http_sink(self.receiver.hook_url)
        files = bridge_setup.write_config(workdir, ws_url=url, webhook=False, sink=sink)
        return bridge_argv(files.config, None)


class BridgeBacklog(BridgeWsHttp):
    """The HTTP row's bridge with its hook down (503): a backlog builds up in the spool, then drains
    once the hook is back (``bench.backlog``). Its admin listener serves ``/metrics``, which tells
    when every event is stored."""

    key = BACKLOG
    refuse = True
    SPOOL_BYTES_PER_EVENT = 4096
    """``state.max_bytes`` per backlog event: several times a payload, so the spool never fills."""

    def __init__(self, events: int) -> None:
        self.events = events
        self.label = f"bridge backlog drain, {events:,} events"

    async def command(self, url: str, workdir: Path) -> list[str]:
        sink = bridge_setup.http_sink(self.receiver.hook_url, retry=bridge_setup.BACKLOG_RETRY)
        max_bytes = max(1 << 30, self.events * self.SPOOL_BYTES_PER_EVENT)
        files = bridge_setup.write_config(
            workdir, ws_url=url, webhook=False, sink=sink, admin=True, max_bytes=max_bytes
        )
        return bridge_argv(files.config, None)


class WebhookTarget(Target):
    """A receiver of signed webhook POSTs, sent at a fixed concurrency, writing a file."""

    burst: BurstKind = "webhook"
    concurrency: int

    @abc.abstractmethod
    def command(self, workdir: Path, out: Path) -> list[str]:
        """The receiver's command line: it reports its port on stderr (``webhook.listening``)."""

    async def open(self, workdir: Path, *, within: float) -> Session:
        out = workdir / OUT_FILE
        process = ClientProcess(self.key, self.command(workdir, out), workdir,
                                stop_by_signal=True)  # fmt: skip
        try:
            process.start()
            port = await process.listening_port("webhook.listening", within)
        except (TimeoutError, OSError, ValueError) as exc:
            await process.stop(exit_wait=0.0)
            raise StartError(f"{self.key}: {exc}: {process.stderr_tail()}") from None
        except BaseException:
            await process.stop(exit_wait=0.0)
            raise
        source = WebhookLoad(f"http://127.0.0.1:{port}/webhooks", bridge_setup.WEBHOOK_SECRET,
                             self.concurrency)  # fmt: skip
        tail = FileTail(out)
        tail.start()
        return Session(process, source, tail)


class BaselineW(WebhookTarget):
    """The latency baseline of every webhook row, at the concurrency of the one the target names;
    its burst is the forwarders' (20,000 events): at its rate the webhook rows' 4,000 would last
    well under a second."""

    key = BASE_W
    label = f"baseline W: webhook receiver, c={WEBHOOK_BASE_CONCURRENCY}"
    concurrency = WEBHOOK_BASE_CONCURRENCY
    burst: BurstKind = "forwarder"

    def command(self, workdir: Path, out: Path) -> list[str]:
        return python_module("bench.baseline_w", bridge_setup.WEBHOOK_SECRET, out)


class BridgeWebhook(WebhookTarget):
    """``openmail-bridge run``: signed webhook POSTs at a fixed concurrency -> file sink."""

    is_bridge = True

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.key = webhook_key(concurrency)
        self.label = f"bridge webhook -> file, c={concurrency}"

    def command(self, workdir: Path, out: Path) -> list[str]:
        files = bridge_setup.write_config(
            workdir, ws_url=None, webhook=True, sink=bridge_setup.file_sink(out)
        )
        return bridge_argv(files.config, None)


class JetStreamTarget(WsTarget):
    """A WebSocket client publishing to JetStream. The run's own nats-server, with the stream, is
    started first, then what observes the row (:meth:`prepare`), then the client; they stop in
    the reverse order."""

    server: jetstream.NatsServer
    """The server of the session last opened."""

    def unavailable(self) -> str | None:
        return None if jetstream.server_binary() else jetstream.MISSING

    def edge_argv(self, url: str, workdir: Path) -> list[str]:
        """An edge bridge: WebSocket -> spool -> NATS sink, its config in ``workdir``."""
        files = bridge_setup.write_config(
            workdir,
            ws_url=url,
            webhook=False,
            sink=jetstream.nats_sink(),
            nats=jetstream.nats_section(self.server.url),
        )
        return bridge_argv(files.config, None)

    @abc.abstractmethod
    async def prepare(self, workdir: Path, within: float) -> ClientProcess:
        """Start the process the events are observed through; it is stopped after the client."""

    async def open(self, workdir: Path, *, within: float) -> Session:
        server = jetstream.NatsServer(workdir)
        self.server = server
        try:
            await server.start(within)
            await jetstream.create_stream(server.url)
            observed = await self.prepare(workdir, within)
        except (RuntimeError, OSError, TimeoutError, nats.errors.Error) as exc:
            await server.stop()
            raise StartError(f"{self.key}: {exc}") from None
        except BaseException:
            await server.stop()
            raise
        try:
            session = await super().open(workdir, within=within)
        except BaseException:
            await observed.stop(exit_wait=0.0)
            await server.stop()
            raise
        session.cleanups += [self._stopper(observed), server.stop]
        if server.process is not None:
            session.helpers.append(server.process)
        return session

    @staticmethod
    def _stopper(process: ClientProcess) -> Callable[[], Awaitable[None]]:
        async def stop() -> None:
            await process.stop(exit_wait=0.0)

        return stop


class StreamTarget(JetStreamTarget):
    """Observed in the stream: the stream tail (``bench.stream_tail``) records each event's
    arrival there."""

    tail: jetstream.StreamTail

    async def prepare(self, workdir: Path, within: float) -> ClientProcess:
        self.tail = jetstream.StreamTail(workdir, self.server.url)
        await self.tail.start(within)
        return self.tail.process

    def observer(self, conn: WsConnection, workdir: Path) -> ReceiptTail:
        return ReceiptTail(self.tail.receipts)

    async def open(self, workdir: Path, *, within: float) -> Session:
        session = await super().open(workdir, within=within)
        session.helpers.append(self.tail.process)
        return session


class BaselineD(StreamTarget):
    key = BASE_D
    label = "baseline D: nats-py, await each PubAck"
    burst: BurstKind = "forwarder"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return python_module("bench.baseline_d", url, self.server.url, jetstream.STREAM.name)


class BridgeWsNats(StreamTarget):
    """``openmail-bridge run``: WebSocket -> durable spool -> NATS sink (JetStream)."""

    key = WS_NATS
    label = "bridge WS -> spool -> JetStream"
    stop_by_signal = True
    is_bridge = True
    burst: BurstKind = "bridge"

    async def command(self, url: str, workdir: Path) -> list[str]:
        return self.edge_argv(url, workdir)


class BridgeNatsEndToEnd(JetStreamTarget):
    """An edge bridge (WebSocket -> spool -> NATS sink) and a sidecar bridge (durable consumer ->
    spool -> file sink), observed in the sidecar's file. The sidecar is part of the client: its
    CPU and peak RSS count in the row."""

    key = NATS_E2E
    label = "edge -> JetStream -> sidecar -> file"
    stop_by_signal = True
    is_bridge = True
    burst: BurstKind = "bridge"
    sidecar: ClientProcess

    async def prepare(self, workdir: Path, within: float) -> ClientProcess:
        (workdir / "sidecar").mkdir(exist_ok=True)
        files = bridge_setup.write_config(
            workdir / "sidecar",
            ws_url=None,
            webhook=False,
            sink=bridge_setup.file_sink(workdir / OUT_FILE),
            nats=jetstream.nats_section(self.server.url, consume=True),
        )
        self.sidecar = ClientProcess("sidecar", bridge_argv(files.config, None), workdir,
                                     stop_by_signal=True)  # fmt: skip
        self.sidecar.start()
        try:
            await jetstream.wait_consumer(self.server.url, self.sidecar, within)
        except BaseException:
            await self.sidecar.stop(exit_wait=0.0)
            raise
        return self.sidecar

    async def command(self, url: str, workdir: Path) -> list[str]:
        return self.edge_argv(url, workdir)

    def observer(self, conn: WsConnection, workdir: Path) -> FileTail:
        return FileTail(workdir / OUT_FILE)

    async def open(self, workdir: Path, *, within: float) -> Session:
        session = await super().open(workdir, within=within)
        session.partners.append(self.sidecar)
        return session


def all_targets(settings: Settings) -> list[Target]:
    """Every row, in table order: baselines first, as the ratios refer to them."""
    targets: list[Target] = [BaselineA(), BaselineB(), BaselineC(), BaselineD(), BaselineW()]
    targets += [BridgeWs(), BridgeWs(seed_ids=settings.seed_ids)]
    targets += [BridgeWebhook(c) for c in settings.concurrencies]
    targets += [BridgeWsHttp(), BridgeBacklog(settings.backlog)]
    return [*targets, BridgeWsNats(), BridgeNatsEndToEnd()]


async def settle() -> None:
    """A short pause between runs, so one client's exit does not overlap the next one's start."""
    await asyncio.sleep(0.2)
