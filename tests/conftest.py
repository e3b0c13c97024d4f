"""Shared fixtures: the OpenMail simulator on 127.0.0.1:0, configs on tmp_path, a running bridge,
a capturing HTTP receiver that verifies OpenMail signatures on its own, and a subprocess bridge."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml
from aiohttp import web
from hypothesis import HealthCheck, settings

from bridge.config import Config, build_config
from bridge.errors import StoreError
from bridge.events import Event
from bridge.simulator import DEMO_API_KEY, Simulator
from bridge.sinks import SINK_TYPES
from bridge.sources.webhook import WebhookSource
from bridge.sources.websocket import WebSocketSource
from bridge.store import AcceptOutcome, Store
from bridge.supervisor import Supervisor

WEBHOOK_SECRET = "whsec-test-openmail-0001"
AGENT_SECRET = "agent-secret-0002"

# The suite runs beside real servers and subprocesses on a small machine: slow example drawing is
# the machine's load, not a bug in a strategy. Per-test settings still choose their example counts.
settings.register_profile(
    "suite", suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
settings.load_profile("suite")


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds; fail the test with a clear message when it does not."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# Ports for bridges the tests configure by number are taken below Linux's ephemeral range
# (32768 and up): a port a test picked and has not bound yet can then never be handed to another
# socket's bind to port 0, and the kernel's ephemeral choice (even ports, and sometimes the same one
# twice in a row) plays no part. Each pytest-xdist worker draws from its own slice.
_PORT_FLOOR, _PORT_CEILING = 20000, 32768
_handed_out: set[int] = set()
_PORT_START = random.SystemRandom()


def free_port() -> int:
    """A port free now and never handed out before in this run, for a bridge that must listen
    at the same address across restarts (where OpenMail's webhook retries go)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = (_PORT_CEILING - _PORT_FLOOR) // workers
    low = _PORT_FLOOR + (int(worker) % workers if worker.isdigit() else 0) * size
    first = low + _PORT_START.randrange(size)  # random: this module may be imported twice
    for step in range(size):
        port = low + (first - low + step) % size
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in 127.0.0.1:{low}-{low + size - 1}")


async def accepts_connections(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` now. A bridge answers /healthz once its
    admin server is up, a moment before its webhook listener binds."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    """OpenMail's webhook headers for ``body``, computed independently of bridge.protocol."""
    timestamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return {
        "X-Timestamp": timestamp,
        "X-Signature": digest.hexdigest(),
        "Content-Type": "application/json",
    }


def stored_ids(db: Path) -> set[str]:
    """The ids sinks send (``X-Event-Id``) of the events in a spool's dedup record, read through a
    separate read-only connection. A record keyed by content keeps that id as ``sent_id``."""
    if not db.exists():
        return set()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT COALESCE(sent_id, event_id) FROM seen")}
    finally:
        conn.close()


def events_named(logs: Sequence[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The captured log entries (structlog.testing.capture_logs) with event name ``name``."""
    return [entry for entry in logs if entry.get("event") == name]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def bridge_config_dict(
    tmp_path: Path, sim: Simulator | None = None, **overrides: Any
) -> dict[str, Any]:
    """A config for tests: short timings, ports 0, state and files under tmp_path."""
    base: dict[str, Any] = {
        "openmail": {
            "api_key": DEMO_API_KEY,
            "websocket": {
                "enabled": sim is not None,
                "url": sim.ws_url if sim is not None else "ws://127.0.0.1:9/v1/ws",
                "reconnect": {"initial": "50ms", "max": "300ms", "reset_after": "2s"},
                "subscribe_timeout": "2s",
                "ping_interval": "1s",
                "stale_after": "5s",
            },
            "webhook": {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET},
        },
        "state": {"path": str(tmp_path / "state" / "bridge.db")},
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"level": "debug", "format": "json"},
        "shutdown_timeout": "2s",
        "sinks": {"audit": {"type": "file", "path": str(tmp_path / "events.jsonl")}},
    }
    return deep_merge(base, overrides)


def make_config(tmp_path: Path, sim: Simulator | None = None, **overrides: Any) -> Config:
    return build_config(
        bridge_config_dict(tmp_path, sim, **overrides),
        sink_types=SINK_TYPES,
        base_dir=tmp_path,
        env=os.environ,
    )


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.asynccontextmanager
async def running_bridge(config: Config) -> AsyncIterator[Supervisor]:
    """An in-process bridge, started and stopped around the block (uvicorn's ``run_server``)."""
    supervisor = Supervisor(config)
    await supervisor.start()
    try:
        yield supervisor
    finally:
        await supervisor.stop()


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Each test starts from structlog's defaults: code under test (the CLI, the demo) configures
    logging process-wide, which must not leak a level filter or a closed stream into the next."""
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(retry_scale=0.01, ping_interval=5.0, pong_timeout=5.0)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


# --- an HTTP receiver standing in for an agent's webhook handler -------------------------------


def openmail_signature_ok(secret: str, headers: Any, body: bytes, tolerance: int = 300) -> bool:
    """OpenMail's documented verification, written independently of bridge.protocol."""
    timestamp = headers.get("X-Timestamp", "")
    signature = headers.get("X-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), signature)


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A real aiohttp server on 127.0.0.1:0. ``statuses`` is consumed per request (then 200);
    ``answer``, when set, decides each answer from the request's JSON body instead: its status
    and body text."""

    secret: str | None = None
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    accepted: list[Received] = field(default_factory=list)
    bad_signatures: int = 0
    up: bool = True
    extra_headers: dict[str, str] = field(default_factory=dict)
    answer: Callable[[Any], tuple[int, str]] | None = None
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        item = Received(body, dict(request.headers), time.time())
        self.received.append(item)
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.up:
            return web.Response(status=503)
        if self.secret is not None and not openmail_signature_ok(
            self.secret, request.headers, body
        ):
            self.bad_signatures += 1
            return web.Response(status=401)
        text = None
        if self.answer is not None:
            status, text = self.answer(json.loads(body))
        else:
            status = self.statuses.pop(0) if self.statuses else 200
        if 200 <= status < 300:
            self.accepted.append(item)
        return web.Response(status=status, headers=self.extra_headers, text=text)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def accepted_ids(self) -> list[str]:
        return [r.json["event_id"] for r in self.accepted]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(secret=AGENT_SECRET)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


# --- a bridge in a real subprocess ---------------------------------------------------------------


@dataclass
class BridgeProcess:
    config_path: Path
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.stderr_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    def log_events(self) -> list[str]:
        return [entry.get("event", "") for entry in self.logs()]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout=timeout)

    async def exited(self, timeout: float = 20.0) -> int:
        """:meth:`wait` off the event loop: servers the test runs on it (an agent the bridge is
        delivering to) keep answering while the bridge drains."""
        return await asyncio.to_thread(self.proc.wait, timeout)


def start_bridge_process(config_path: Path, *, env: dict[str, str] | None = None) -> BridgeProcess:
    stderr_path = config_path.with_suffix(f".{time.monotonic_ns()}.stderr")
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(config_path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, **(env or {})},
        )
    return BridgeProcess(config_path, proc, stderr_path)


@pytest.fixture
def bridge_processes() -> Iterator[list[BridgeProcess]]:
    """Collects subprocess bridges and makes sure none outlives its test."""
    procs: list[BridgeProcess] = []
    yield procs
    for bp in procs:
        if bp.proc.poll() is None:
            bp.proc.send_signal(signal.SIGKILL)
            bp.proc.wait(timeout=10)
        if bp.proc.stdout:
            bp.proc.stdout.close()


class RecordingSpool:
    """A ``bridge.sources.Spool`` that records what a source hands over and accepts all of it,
    for tests of a source's own handling. The answer comes a turn of the loop later, as a
    commit's does; room and the cursor are those of ``store`` when one is given."""

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self.accepted: list[Event] = []

    def accept(self, events: Sequence[Event]) -> asyncio.Future[list[AcceptOutcome | StoreError]]:
        self.accepted.extend(events)
        answer: asyncio.Future[list[AcceptOutcome | StoreError]]
        answer = asyncio.get_running_loop().create_future()
        outcomes: list[AcceptOutcome | StoreError] = [AcceptOutcome.ACCEPTED] * len(events)
        asyncio.get_running_loop().call_soon(lambda: answer.done() or answer.set_result(outcomes))
        return answer

    @property
    def cursor(self) -> str | None:
        return None if self.store is None else self.store.cursor

    @property
    def max_bytes(self) -> int:
        return 1 << 30 if self.store is None else self.store.limits.max_bytes

    def has_room_for(self, size: int) -> bool:
        return True

    async def wait_room(self, size: int = 0) -> None:
        return None

    async def clear_cursor(self) -> None:
        if self.store is not None:
            await self.store.clear_cursor()


@contextlib.asynccontextmanager
async def sink_down(
    receiver: Receiver, inject: Callable[[], Awaitable[str]], count: int
) -> AsyncIterator[list[str]]:
    """Take ``receiver`` down (it answers 503, so its sink keeps retrying), inject ``count``
    events with ``inject()`` and hand their ids to the block; the receiver is back up after it."""
    receiver.up = False
    try:
        yield [await inject() for _ in range(count)]
    finally:
        receiver.up = True


@contextlib.asynccontextmanager
async def writer_held(store: Store) -> AsyncIterator[None]:
    """The store's writer thread busy with a write of ours until the block ends: every mark
    queued meanwhile waits; the write commits (empty) on the way out."""
    held, release = threading.Event(), threading.Event()

    def hold(tx: object) -> None:
        held.set()
        release.wait()

    blocked = store._writer.submit(hold)
    try:
        await asyncio.to_thread(held.wait)
        yield
    finally:
        release.set()
        await blocked


def websocket_of(supervisor: Supervisor) -> WebSocketSource:
    """The running WebSocket source of a bridge whose config enables it."""
    assert supervisor.websocket is not None, "the WebSocket source is not enabled"
    return supervisor.websocket


def webhook_of(supervisor: Supervisor) -> WebhookSource:
    """The running webhook listener of a bridge whose config enables it."""
    assert supervisor.webhook is not None, "the webhook listener is not enabled"
    return supervisor.webhook


async def run_cli(*args: str) -> tuple[int, str, str]:
    """The real ``openmail-bridge`` in a subprocess, awaited while an in-process bridge runs on:
    (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass(frozen=True)
class SelfSigned:
    """A fresh self-signed certificate for 127.0.0.1: a server context, and a client that trusts
    it."""

    server: ssl.SSLContext
    client: ssl.SSLContext


@pytest.fixture
def self_signed(tmp_path: Path) -> SelfSigned:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return SelfSigned(server, ssl.create_default_context(cafile=str(cert)))


@pytest.fixture
def tls_context(self_signed: SelfSigned) -> ssl.SSLContext:
    """A server context with a freshly made self-signed certificate for 127.0.0.1."""
    return self_signed.server
