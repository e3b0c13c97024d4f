"""Observers: when did each event land?

``FileTail`` follows an output file from a thread, polling every half millisecond, and stamps each
line with the time it became visible (so latency is measured to the line being in the file, within
the poll interval). ``ReceiptTail`` follows the hook receiver's receipts file the same way, but
takes each event's time from the line: the receiver stamped it when the request came in.
``ReceiptLog`` is for baseline A, which writes no file: the client keeps the
arrival time of each event, in arrival order, and hands them over when it exits; a WebSocket ping
fences each stage (aiohttp answers it only after handling every earlier frame).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from array import array
from pathlib import Path
from typing import Protocol

from bench.events import EVENT_ID_RE, Stage
from bench.receiver import RECEIPT_RE
from bench.wsserver import WsConnection

POLL_SECONDS = 0.0005
MAX_TAIL_SECONDS = 3600.0
"""Hard bound on a tail thread's life, whatever happens to the harness."""


class Observer(Protocol):
    def start(self) -> None: ...

    def track(self, stage: Stage) -> None: ...

    async def wait(self, stage: Stage, within: float) -> bool:
        """True once every event sent in ``stage`` has landed; False after ``within`` seconds."""
        ...

    def finish(self) -> None:
        """Called after the client exited: collect whatever is only known then."""
        ...


async def _wait_landed(stage: Stage, within: float) -> bool:
    deadline = time.monotonic() + within
    while not stage.complete:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True


class FileTail:
    """Follows ``path`` (created later by the client) and marks each benchmark event's line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stages: dict[bytes, Stage] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tail:{path.name}", daemon=True)
        self.foreign_lines = 0

    def start(self) -> None:
        self._thread.start()

    def track(self, stage: Stage) -> None:
        self._stages[stage.tag.encode()] = stage

    async def wait(self, stage: Stage, within: float) -> bool:
        return await _wait_landed(stage, within)

    def finish(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_TAIL_SECONDS
        fd: int | None = None
        pending = b""
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except FileNotFoundError:
                        time.sleep(POLL_SECONDS)
                        continue
                data = os.read(fd, 1 << 20)
                if not data:
                    time.sleep(POLL_SECONDS)
                    continue
                now = time.monotonic_ns()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                for line in lines:
                    self._land(line, now)
        finally:
            if fd is not None:
                os.close(fd)

    def _land(self, line: bytes, now: int) -> None:
        found = self._read(line, now)
        stage = self._stages.get(found[0]) if found else None
        if found is None or stage is None:
            self.foreign_lines += 1
            return
        stage.mark_landed(found[1], found[2])

    def _read(self, line: bytes, now: int) -> tuple[bytes, int, int] | None:
        """A benchmark event's stage tag, index and landing time in ``line`` (seen ``now``)."""
        match = EVENT_ID_RE.search(line)
        return (match.group(1), int(match.group(2)), now) if match else None


class ReceiptTail(FileTail):
    """Follows the hook receiver's receipts; an event landed when the receiver got it."""

    def _read(self, line: bytes, now: int) -> tuple[bytes, int, int] | None:
        match = RECEIPT_RE.search(line)
        return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


class ReceiptLog:
    """Baseline A's arrival times: fenced live over the WebSocket, read from its dump at exit."""

    def __init__(self, conn: WsConnection, dump: Path) -> None:
        self.conn = conn
        self.dump = dump
        self._stages: list[Stage] = []

    def start(self) -> None:
        """Nothing runs here: the client does the recording."""

    def track(self, stage: Stage) -> None:
        self._stages.append(stage)

    async def wait(self, stage: Stage, within: float) -> bool:
        try:
            await self.conn.fence(within)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def finish(self) -> None:
        """Events arrive in send order on one connection: the n-th stamp is the n-th event sent."""
        stamps = array("q")
        if self.dump.exists():
            stamps.frombytes(self.dump.read_bytes())
        position = 0
        for stage in self._stages:
            for i in range(stage.sent):
                if position < len(stamps):
                    stage.mark_landed(i, stamps[position])
                position += 1
