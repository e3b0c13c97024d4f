"""A purpose-built OpenMail WebSocket load server on 127.0.0.1:0.

It speaks just enough of the protocol for every client under test: the HTTP upgrade (any API key),
``subscribe`` -> ``subscribed``, the protocol ``ping`` -> ``pong``, WebSocket ping/pong and close.
Events are written as raw, unmasked RFC 6455 text frames straight onto the transport, so the server
costs little CPU and the client, not the server, sets the pace of a max-throughput run.

The simulator in ``bridge.simulator`` is the faithful stand-in for tests; it builds every event
with ``json.dumps`` and fans it out through aiohttp, which would make it the bottleneck here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
from typing import Final

from bench.events import Stage, iso_now
from bench.pacing import Pacer

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEADER: Final = 16 * 1024
_MAX_CLIENT_FRAME: Final = 1 << 20
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
SUBSCRIBED: Final = b'{"type":"subscribed","inbox_ids":[],"event_types":[]}'
PONG: Final = b'{"type":"pong"}'
BURST_CHUNK: Final = 64
"""Frames per transport write in a max-throughput push."""
WRITE_HIGH_WATER: Final = 256 * 1024


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked server frame (RFC 6455 section 5.2)."""
    n = len(payload)
    head = bytes((0x80 | opcode,))
    if n < 126:
        return head + bytes((n,)) + payload
    if n < 1 << 16:
        return head + b"\x7e" + n.to_bytes(2, "big") + payload
    return head + b"\x7f" + n.to_bytes(8, "big") + payload


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def _accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()  # noqa: S324


class WsConnection:
    """One subscribed client: push events to it, fence on it, close it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.subscribed = asyncio.Event()
        self.closed = asyncio.Event()
        self._pongs: dict[bytes, asyncio.Future[int]] = {}
        self._pings = 0
        self._close_sent = False
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    @property
    def problem(self) -> str | None:
        """Sends that fell short show in each stage's ``sent``; nothing else can go wrong here."""
        return None

    # --- pushing events --------------------------------------------------------------------

    async def push_paced(self, stage: Stage, pacer: Pacer) -> None:
        """Send ``stage`` at the pacer's rate, stamping each event's send time."""
        for i in range(stage.count):
            if self.closed.is_set() or not await pacer.wait(i):
                return
            self.writer.write(frame(OP_TEXT, stage.body(i, iso_now())))
            stage.sent_ns[i] = time.monotonic_ns()
            stage.sent = i + 1
            if self.writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                await self.writer.drain()  # the client stopped reading: the pacer will notice

    async def push_burst(self, stage: Stage) -> None:
        """Send ``stage`` as fast as the client reads it (TCP flow control sets the pace)."""
        for start in range(0, stage.count, BURST_CHUNK):
            if self.closed.is_set():
                return
            now = iso_now()
            end = min(start + BURST_CHUNK, stage.count)
            self.writer.write(
                b"".join(frame(OP_TEXT, stage.body(i, now)) for i in range(start, end))
            )
            sent_at = time.monotonic_ns()
            for i in range(start, end):
                stage.sent_ns[i] = sent_at
            stage.sent = end
            await self.writer.drain()

    async def fence(self, within: float) -> int:
        """Send a WebSocket ping after everything sent so far; return when its pong came back.

        aiohttp answers a ping only when the application's receive loop reaches it, so for such a
        client the pong proves every earlier frame was received and handled.
        """
        self._pings += 1
        token = f"fence-{self._pings}".encode()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pongs[token] = future
        self.writer.write(frame(OP_PING, token))
        try:
            return await asyncio.wait_for(future, within)
        finally:
            self._pongs.pop(token, None)

    async def close(self, code: int = 1001, within: float = 3.0) -> None:
        """Close handshake: send our close, wait (bounded) for the client's, drop the TCP link."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            if not self._close_sent and not self.writer.is_closing():
                self._close_sent = True
                self.writer.write(frame(OP_CLOSE, code.to_bytes(2, "big")))
                await self.writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), within)
        self.writer.close()

    # --- reading client frames ---------------------------------------------------------------

    async def serve(self) -> None:
        """Read client frames until the connection ends."""
        fragments: list[bytes] = []
        try:
            while True:
                opcode, fin, payload = await self._read_frame()
                if opcode == OP_CONT or (opcode == OP_TEXT and not fin):
                    fragments.append(payload)
                    if not fin:
                        continue
                    payload, opcode, fragments = b"".join(fragments), OP_TEXT, []
                if opcode == OP_TEXT:
                    self._on_text(payload)
                elif opcode == OP_PING:
                    self.writer.write(frame(OP_PONG, payload))
                elif opcode == OP_PONG:
                    future = self._pongs.get(payload)
                    if future is not None and not future.done():
                        future.set_result(time.monotonic_ns())
                elif opcode == OP_CLOSE:
                    if not self._close_sent:
                        self._close_sent = True
                        self.writer.write(frame(OP_CLOSE, payload[:2]))
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()
            for future in self._pongs.values():
                if not future.done():
                    future.set_exception(ConnectionError("client went away before the fence"))
            self.writer.close()

    async def _read_frame(self) -> tuple[int, bool, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
        if n > _MAX_CLIENT_FRAME:
            raise ValueError("client frame too large")
        mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
        payload = await self.reader.readexactly(n)
        if mask and payload:
            payload = _unmask(payload, mask)
        return b0 & 0x0F, bool(b0 & 0x80), payload

    def _on_text(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "subscribe":
            self.writer.write(frame(OP_TEXT, SUBSCRIBED))
            self.subscribed.set()
        elif kind == "ping":
            self.writer.write(frame(OP_TEXT, PONG))


class LoadServer:
    """Accepts WebSocket clients on 127.0.0.1:0 and hands out each one once it has subscribed."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._subscribers: asyncio.Queue[WsConnection] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def next_subscriber(self, within: float) -> WsConnection:
        """The next connection that sent ``subscribe``; TimeoutError if none does in time."""
        return await asyncio.wait_for(self._subscribers.get(), within)

    async def stop(self) -> None:
        """Stop listening and cut every connection still open; its handler then ends by itself."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if not await self._handshake(reader, writer):
                writer.close()
                return
            conn = WsConnection(reader, writer)
            waiter = asyncio.ensure_future(self._announce(conn))
            try:
                await conn.serve()
            finally:
                waiter.cancel()
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)

    async def _announce(self, conn: WsConnection) -> None:
        await conn.subscribed.wait()
        self._subscribers.put_nowait(conn)

    @staticmethod
    async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            return False
        if len(head) > _MAX_HEADER:
            return False
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        key = headers.get("sec-websocket-key")
        if key is None or "websocket" not in headers.get("upgrade", "").lower():
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return False
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + _accept_key(key).encode() + b"\r\n\r\n"
        )
        return True
