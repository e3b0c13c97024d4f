"""Stdout sink: one JSON line per event on standard output, flushed per line."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.config.schema import SinkConfig
from bridge.errors import PermanentDeliveryError, RetryableDeliveryError
from bridge.sinks.lines import LineFormat, format_line

if TYPE_CHECKING:
    from bridge.store import Delivery


@dataclass(frozen=True, slots=True, kw_only=True)
class StdoutSinkOptions:
    format: LineFormat = "payload"


class _Writer:
    """One daemon thread that runs the sink's writes in order.

    Not asyncio's shared pool: a reader that stops reading blocks the write for good, and a
    blocked thread there would take a thread from every other user of the pool (the file sink's
    fsyncs, the webhook's large bodies), and the pool's shutdown would wait for it at exit. A
    daemon thread blocked on a dead pipe ends with the process.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], asyncio.Future[None]]] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name=f"stdout-{name}", daemon=True)
        self._thread.start()

    def run(self, job: Callable[[], None]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._jobs.put((job, future))
        return future

    def _run(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                job()
            except BaseException as exc:  # handed to the sender, as asyncio.to_thread would
                _settle(future, exc)
            else:
                _settle(future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return  # the sender was cancelled
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        future.get_loop().call_soon_threadsafe(settle)


class StdoutSink:
    """Writes each event as one line (see :func:`bridge.sinks.lines.format_line`) to stdout.

    The write runs in a thread of the sink's own: a pipe whose reader is slow blocks the writer,
    and that must not stall the event loop or anything else. ``sys.stdout`` is looked up at
    every send, not at import, so a redirected or captured stdout is honoured.
    """

    def __init__(self, config: SinkConfig[StdoutSinkOptions]) -> None:
        self.name = config.name
        self._format = config.options.format
        # Every write goes through this one thread, in order: a send cancelled mid-write cannot
        # let the next line start before this one is whole.
        self._writer: _Writer | None = None

    def _in_thread(self, line: bytes) -> asyncio.Future[None]:
        if self._writer is None:
            self._writer = _Writer(self.name)
        return self._writer.run(lambda: self._write(line))

    async def start(self) -> None:
        pass

    async def send(self, delivery: Delivery) -> None:
        """Write and flush the event's line.

        Raises:
            PermanentDeliveryError: the payload is not JSON.
            RetryableDeliveryError: stdout is closed (broken pipe) or cannot be written.
        """
        line = format_line(delivery, self._format)
        await self._in_thread(line)

    async def send_batch(
        self, deliveries: Sequence[Delivery]
    ) -> list[PermanentDeliveryError | None]:
        """Write the lines of ``deliveries`` in one write and one flush; see ``BatchSink``.

        Raises:
            RetryableDeliveryError: stdout is closed (broken pipe) or cannot be written.
        """
        results: list[PermanentDeliveryError | None] = []
        lines: list[bytes] = []
        for delivery in deliveries:
            try:
                lines.append(format_line(delivery, self._format))
                results.append(None)
            except PermanentDeliveryError as exc:
                results.append(exc)
        if lines:
            await self._in_thread(b"".join(lines))
        return results

    async def reopen(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _write(self, line: bytes) -> None:
        try:
            _write_stdout(line)
        except (ValueError, AttributeError) as exc:
            # ValueError: the file object is closed; AttributeError: there is no stdout (None).
            raise RetryableDeliveryError(f"stdout is closed (broken pipe): {exc}") from None
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
                raise RetryableDeliveryError(f"stdout is closed (broken pipe): {exc}") from None
            raise RetryableDeliveryError(f"cannot write to stdout: {exc}") from None


def _write_stdout(line: bytes) -> None:
    """Write ``line`` to the current ``sys.stdout``, whole, leaving nothing in Python's buffers.

    A real file descriptor is written directly (after flushing what others ``print()``-ed, to keep
    order): a line that failed to go out must not stay in ``sys.stdout.buffer``, where the next
    line would be glued to its remains and the interpreter's flush at exit would fail again with a
    BrokenPipeError of its own. Without a descriptor (pytest's capsys, an in-memory stream) the
    stream's byte buffer is written and flushed.
    """
    stream = sys.stdout
    stream.flush()
    try:
        fd = stream.fileno()
    except OSError:  # io.UnsupportedOperation: no descriptor behind this stream
        stream.buffer.write(line)
        stream.buffer.flush()
        return
    view = memoryview(line)
    while view:
        view = view[os.write(fd, view) :]
