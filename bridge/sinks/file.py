"""File sink: appends one JSON line per event, with an fsync policy, per-inbox paths and
rotation."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import operator
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import structlog

from bridge.config.schema import SinkConfig
from bridge.config.values import ByteSize, FilePath
from bridge.errors import DeliveryError, PermanentDeliveryError, RetryableDeliveryError
from bridge.sinks.lines import LineFormat, format_line

if TYPE_CHECKING:
    from bridge.store import Delivery

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSinkOptions:
    path: FilePath
    format: LineFormat = "payload"
    fsync: Literal["always", "batch", "never"] = "batch"
    max_bytes: ByteSize | None = None
    backups: int = 5


# --- Paths ---------------------------------------------------------------------------------------

INBOX_PLACEHOLDER: Final = "{inbox_id}"
NO_INBOX: Final = "_none"
"""The ``{inbox_id}`` of an event without an inbox (``pod.*`` lifecycle events)."""
_UNSAFE_CHARS: Final = re.compile(r"[^A-Za-z0-9_-]")
_MAX_COMPONENT: Final = 100


def path_component(inbox_id: str | None) -> str:
    """An inbox id as a single, harmless file-name component.

    Only letters, digits, ``_`` and ``-`` survive (OpenMail ids are ``inb_...``); everything
    else, dots and slashes included, becomes ``_``: the result can never be ``..`` or hold a ``/``.
    """
    if inbox_id is None:
        return NO_INBOX
    return _UNSAFE_CHARS.sub("_", inbox_id)[:_MAX_COMPONENT] or "_empty"


# --- The sink ------------------------------------------------------------------------------------

_FILE_MODE: Final = 0o640
"""Event lines hold mail content: not world-readable (the umask may narrow it further)."""
DEFAULT_MAX_OPEN_FILES: Final = 64


class _OpenFile:
    """One open output file and how far it has been written and fsynced (in lines)."""

    __slots__ = ("closed", "fd", "path", "sync_task", "synced", "written")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.written = 0
        self.synced = 0
        self.sync_task: asyncio.Task[None] | None = None
        self.closed = False


class FileSink:
    """Appends one JSON line per event to a file (or one file per inbox).

    Lines are written with ``os.write`` on the event loop, without an ``await`` between the size
    check and the end of the write, so a line is always whole and concurrent sends never interleave;
    only ``fsync`` (which can take long) runs in a thread. With ``fsync: batch`` concurrent sends
    share one ``fsync`` that covers all of their lines (group commit); ``fsyncs`` counts them.

    Args:
        config: the sink's config, with its :class:`FileSinkOptions`.
        max_open_files: per-inbox files kept open at once; the least recently used is closed
            beyond this.
    """

    def __init__(
        self, config: SinkConfig[FileSinkOptions], *, max_open_files: int = DEFAULT_MAX_OPEN_FILES
    ) -> None:
        options = config.options
        self.name = config.name
        self._options = options
        self._template = str(options.path)
        self._fixed_path = Path(self._template)
        self._files: dict[Path, _OpenFile] = {}
        # Held while a file is opened, rotated or closed (those steps await the fsync thread).
        self._lock = asyncio.Lock()
        self.fsyncs = 0
        """fsync calls made so far (for tests and metrics)."""
        self._max_open_files = max_open_files

    async def start(self) -> None:
        """Nothing to do: files are opened on first use, so per-inbox files appear as needed."""

    async def send(self, delivery: Delivery) -> None:
        """Append the event's line; returns once it is written and fsynced as the policy says.

        Raises:
            PermanentDeliveryError: the payload is not JSON.
            RetryableDeliveryError: the file cannot be opened, written or fsynced.
        """
        line = format_line(delivery, self._options.format)
        path = self.path_for(delivery.inbox_id)
        async with self._lock:
            file = await self._file_for(path, len(line))
            self._write(file, line)
            seq = file.written
            if self._options.fsync == "always":
                await self._sync(file, seq)
        if self._options.fsync == "batch":
            await self._sync(file, seq)

    async def send_batch(self, deliveries: Sequence[Delivery]) -> list[DeliveryError | None]:
        """Append the lines of ``deliveries`` in order, then one fsync per file touched.

        Returns one entry per delivery (see ``BatchSink``): None once written (and fsynced as the
        policy says); the error of a payload that cannot be written, which concerns that event
        alone; or, when a write failed after earlier lines were written and fsynced, its error
        for that line and every one after it (the lines before are delivered: never written
        twice).

        Raises:
            RetryableDeliveryError: a file cannot be opened, written or fsynced before any line
                of the batch was written, or the fsync of those written failed.
        """
        results: list[DeliveryError | None] = []
        lines: list[tuple[Path, bytes]] = []
        owners: list[int] = []  # the delivery of each line, by index
        for delivery in deliveries:
            try:
                line = format_line(delivery, self._options.format)
            except PermanentDeliveryError as exc:
                results.append(exc)
                continue
            owners.append(len(results))
            lines.append((self.path_for(delivery.inbox_id), line))
            results.append(None)
        touched: dict[Path, tuple[_OpenFile, int]] = {}
        written = 0  # lines written, in order: runs go out one after another
        failure: RetryableDeliveryError | None = None
        async with self._lock:
            for path, run in self._runs(lines):
                try:
                    file = await self._file_for(path, sum(map(len, run)))
                    self._write(file, b"".join(run), lines=len(run))
                except RetryableDeliveryError as exc:
                    if not written:
                        raise
                    failure = exc
                    break
                written += len(run)
                touched[file.path] = (file, file.written)
        if self._options.fsync != "never":
            for file, seq in touched.values():
                await self._sync(file, seq)
        if failure is not None:
            for index in owners[written:]:
                results[index] = failure
        return results

    async def reopen(self) -> None:
        """Close every file; the next line reopens its path (after logrotate moved the file)."""
        async with self._lock:
            files = list(self._files.values())
            self._files.clear()
            for file in files:
                await self._close(file)
        for file in files:
            log.info("sink.file.reopened", sink=self.name, path=str(file.path))

    async def close(self) -> None:
        """Fsync (unless ``fsync: never``) and close every file."""
        async with self._lock:
            files = list(self._files.values())
            self._files.clear()
            for file in files:
                await self._close(file)

    def path_for(self, inbox_id: str | None) -> Path:
        """The file an event of ``inbox_id`` goes to."""
        if INBOX_PLACEHOLDER not in self._template:
            return self._fixed_path
        return Path(self._template.replace(INBOX_PLACEHOLDER, path_component(inbox_id)))

    # --- Internals (called with the lock held, except _sync and _fsync) ---

    def _runs(self, lines: list[tuple[Path, bytes]]) -> Iterator[tuple[Path, list[bytes]]]:
        """Consecutive lines to one file, written with one system call. With ``max_bytes`` set,
        line by line: a file rotates between two lines, never past its limit by a run."""
        if self._options.max_bytes is not None:
            for path, line in lines:
                yield path, [line]
            return
        for path, group in itertools.groupby(lines, key=operator.itemgetter(0)):
            yield path, [line for _, line in group]

    async def _file_for(self, path: Path, size: int) -> _OpenFile:
        """The open file for ``path``, rotated first if ``size`` more bytes would pass the limit.

        A file leaves ``_files`` before anything awaits on it, so a cancelled send can never leave
        a closed descriptor behind for the next one to write to.
        """
        file = self._files.get(path)
        if file is not None and self._must_rotate(file, size):
            del self._files[path]
            await self._close(file)
            self._rotate(path)
            file = None
        if file is None:
            while len(self._files) >= self._max_open_files:
                await self._close(self._files.pop(next(iter(self._files))))  # least recently used
            file = self._open(path)
        else:
            del self._files[path]
        self._files[path] = file  # last = most recently used
        return file

    def _open(self, path: Path) -> _OpenFile:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            try:
                fd = os.open(path, flags, _FILE_MODE)
            except FileNotFoundError:  # first line: create the directories, then try again
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, flags, _FILE_MODE)
        except OSError as exc:
            raise _os_error(path, exc) from None
        return _OpenFile(path, fd)

    def _write(self, file: _OpenFile, data: bytes, *, lines: int = 1) -> None:
        """Append ``data`` (``lines`` whole lines); a failure takes back all of it."""
        try:
            start = os.lseek(file.fd, 0, os.SEEK_END)
        except OSError as exc:
            raise _os_error(file.path, exc) from None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(file.fd, view) :]
        except OSError as exc:
            # A line cut short (ENOSPC mid-write) would glue onto the next one: take it back.
            with contextlib.suppress(OSError):
                os.ftruncate(file.fd, start)
            raise _os_error(file.path, exc) from None
        file.written += lines

    def _must_rotate(self, file: _OpenFile, size: int) -> bool:
        limit = self._options.max_bytes
        if limit is None:
            return False
        try:
            current = os.fstat(file.fd).st_size
        except OSError as exc:
            raise _os_error(file.path, exc) from None
        # A line longer than the limit still goes into an empty file, alone.
        return current > 0 and current + size > limit

    def _rotate(self, path: Path) -> None:
        """``path`` -> ``path.1`` -> ... -> ``path.<backups>``, the oldest dropped (file closed)."""
        backups = self._options.backups
        try:
            if backups == 0:
                path.unlink(missing_ok=True)
            else:
                for index in range(backups - 1, 0, -1):
                    older = _backup(path, index)
                    if older.exists():
                        older.replace(_backup(path, index + 1))
                path.replace(_backup(path, 1))
        except OSError as exc:
            raise _os_error(path, exc) from None
        log.info("sink.file.rotated", sink=self.name, path=str(path), backups=backups)

    async def _close(self, file: _OpenFile) -> None:
        """Fsync what is unsynced (policy permitting), wait for a running fsync, close the fd."""
        try:
            if self._options.fsync != "never":
                await self._sync(file, file.written)
        except RetryableDeliveryError as exc:
            log.warning(
                "sink.file.fsync_failed", sink=self.name, path=str(file.path), error=str(exc)
            )
        finally:
            if file.sync_task is None or file.sync_task.done():
                file.closed = True
                with contextlib.suppress(OSError):
                    os.close(file.fd)
            else:  # cancelled while an fsync still runs in its thread: close after it
                file.sync_task.add_done_callback(lambda _: _close_fd(file))

    async def _sync(self, file: _OpenFile, seq: int) -> None:
        """Return once an fsync that started after line ``seq`` was written has succeeded.

        A running fsync is joined, not duplicated; lines written while it runs are covered by the
        next one, which one of their senders starts. Shielded, so a cancelled sender does not
        cancel an fsync others wait on.
        """
        while file.synced < seq:
            task = file.sync_task
            if task is None:
                task = file.sync_task = asyncio.create_task(self._fsync(file))
                task.add_done_callback(_retrieve)
            await asyncio.shield(task)

    async def _fsync(self, file: _OpenFile) -> None:
        target = file.written
        try:
            if file.closed:
                raise OSError(errno.EBADF, "closed before its lines were fsynced")
            # Appended lines need their data and the file's new size on disk, not its times:
            # fdatasync (as SQLite uses) skips those; the size still goes through the
            # filesystem's journal, which the store's commits share. fsync where there is none.
            await asyncio.to_thread(getattr(os, "fdatasync", os.fsync), file.fd)
        except OSError as exc:
            raise _os_error(file.path, exc) from None
        finally:
            file.sync_task = None
        self.fsyncs += 1
        file.synced = max(file.synced, target)


def _backup(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def _os_error(path: Path, exc: OSError) -> RetryableDeliveryError:
    return RetryableDeliveryError(f"cannot write {path}: {exc.strerror or exc}")


def _close_fd(file: _OpenFile) -> None:
    file.closed = True
    with contextlib.suppress(OSError):
        os.close(file.fd)


def _retrieve(task: asyncio.Task[None]) -> None:
    # Every waiter may have been cancelled; mark the error seen so asyncio does not log it.
    if not task.cancelled():
        task.exception()
