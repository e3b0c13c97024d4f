"""The attachment directory: files named by their SHA-256, bounded while they are written, and
removed by age.

A download is written to a temporary file in the directory itself (so the final rename is
atomic), hashed as it is written, and bounded at every chunk: by ``max_bytes`` for the file, by
``max_total`` for the directory, and by the free disk, which never goes below ``min_free`` (the
spool's floor) plus :data:`DISK_HEADROOM`, so attachments can never stop ingest. Nothing of the
attachment's own name ever reaches the filesystem: a file is ``<dir>/<sha256>``.

A file's mtime is when it was last needed (stored, or named by an event again). Files go when
not needed for ``retention``; and when the directory is full, those not needed for
:data:`EVICT_AFTER` go first, least recently needed first: anyone can mail the agent, and a
stranger's gigabyte of attachments must not leave everyone else's as ``store_full`` for a week.

Files are ``0640`` and the directory ``0750`` whatever the umask: the agent reads them as a member
of the bridge's group, and no one else can.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from bridge.attachments.rules import Reason, Stored

DISK_HEADROOM: Final = 64 << 20
"""Free disk attachments leave above ``state.min_free``: the spool, which stops accepting at
``min_free``, keeps this much room of its own however many attachments arrive."""
FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750
TEMP_PREFIX: Final = ".part-"
STALE_TEMP: Final = 3600.0
"""A temporary file untouched this long belongs to a download that died with its process."""
EVICT_AFTER: Final = 3600.0
"""A file not needed for this long (or ``retention``, when shorter) may go early to make room;
one needed more recently is kept: the agent it was sent to may not have opened it yet."""
_NAME: Final = re.compile(r"[0-9a-f]{64}")
_NO_SPACE: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


class Refused(Exception):
    """A download that may not be stored; ``reason`` says why."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def free_disk(path: Path) -> int:
    """Bytes an unprivileged user may still write on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class AttachmentFiles:
    """The directory of one sink's attachments (sinks may share one: the names are hashes).

    Args:
        directory: where the files go; created (``0750``) on :meth:`open`.
        max_bytes: the bound of one file.
        max_total: the bound of all files in the directory.
        min_free: ``state.min_free``; writes stop :data:`DISK_HEADROOM` above it.
        evict_after: a file not needed for this long may go to make room (:meth:`make_room`).
        clock: Unix time, for file ages (tests move it).
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_total: int,
        min_free: int,
        evict_after: float = EVICT_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory.absolute()
        self.max_bytes = max_bytes
        self.max_total = max_total
        self.floor = min_free + DISK_HEADROOM
        self.evict_after = evict_after
        self._clock = clock
        # One scan at a time: a sweep and an eviction both recount or discount self.used.
        self._scanning = asyncio.Lock()
        self.used = 0
        """Bytes of the stored files, as last counted plus what was stored since."""
        self.writing = 0
        """Bytes written so far by downloads in progress."""
        self.ready = False

    async def open(self) -> None:
        """Create the directory and count what it holds. Raises OSError: it cannot be made."""
        await asyncio.to_thread(self._open)
        self.ready = True

    def _open(self) -> None:
        self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if (self.directory.stat().st_mode & 0o777) != DIR_MODE:
            os.chmod(self.directory, DIR_MODE)  # mkdir's mode is cut by the umask
        _, self.used = self._scan(remove_before=None)

    def path_of(self, sha256: str) -> Path:
        return self.directory / sha256

    def check_room(self) -> None:
        """Raise :class:`Refused` unless a download could start now: asked before the request,
        so that no body is asked for that could not be kept."""
        if not self.ready:
            raise Refused(Reason.WRITE_FAILED)
        if self.used + self.writing >= self.max_total:
            raise Refused(Reason.STORE_FULL)
        self._room_on_disk(0)

    def writer(self) -> FileWriter:
        """A temporary file to stream one download into. Raises :class:`Refused`."""
        self.check_room()
        return FileWriter(self)

    def _room_on_disk(self, more: int) -> None:
        try:
            free = free_disk(self.directory)
        except OSError:
            raise Refused(Reason.WRITE_FAILED) from None
        if free - more < self.floor:
            raise Refused(Reason.NO_SPACE)

    def reserve(self, written: int, more: int) -> None:
        """Room for ``more`` bytes of a download that has ``written`` already, or Refused."""
        if written + more > self.max_bytes:
            raise Refused(Reason.TOO_LARGE)
        if self.used + self.writing + more > self.max_total:
            raise Refused(Reason.STORE_FULL)
        self._room_on_disk(more)

    def keep(self, temp: Path, sha256: str, size: int) -> Stored:
        """Move a finished download to its name (or drop it when that content is there
        already), and mark the file as needed now, for retention."""
        target = self.path_of(sha256)
        now = self._clock()
        if _regular_file(target):
            temp.unlink(missing_ok=True)
        else:  # absent, or something else in the way (a link is replaced, never followed)
            os.replace(temp, target)
            self.used += size
        os.utime(target, (now, now), follow_symlinks=False)
        return Stored(target, sha256, size)

    def existing(self, sha256: str) -> Stored | None:
        """The stored file of that content, marked as needed now; None when it is gone."""
        target = self.path_of(sha256)
        now = self._clock()
        if not _regular_file(target):
            return None
        try:
            os.utime(target, (now, now), follow_symlinks=False)
            size = target.lstat().st_size
        except OSError:
            return None
        return Stored(target, sha256, size)

    async def sweep(self, retention: float) -> int:
        """Remove files not needed for ``retention`` seconds, and temporary files of downloads
        that died; count the directory again. Returns how many files were removed."""
        if not self.ready:
            return 0
        async with self._scanning:
            removed, self.used = await asyncio.to_thread(self._scan, self._clock() - retention)
        return removed

    async def make_room(self, size: int) -> tuple[int, int]:
        """Unless ``size`` more bytes fit under ``max_total``, remove files not needed for
        ``evict_after`` seconds, least recently needed first, until they do or none of that age
        is left. Returns (files removed, bytes freed). Raises OSError: the directory cannot be
        read."""
        if not self.ready or self._over(size) <= 0:
            return 0, 0
        async with self._scanning:
            over = self._over(size)
            if over <= 0:
                return 0, 0
            before = self._clock() - self.evict_after
            removed, freed = await asyncio.to_thread(self._evict, over, before)
            self.used = max(0, self.used - freed)
        return removed, freed

    def _over(self, size: int) -> int:
        return self.used + self.writing + size - self.max_total

    def _evict(self, over: int, before: float) -> tuple[int, int]:
        old: list[tuple[float, int, str]] = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not _NAME.fullmatch(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mtime < before:
                    old.append((st.st_mtime, st.st_size, entry.path))
        old.sort()
        removed = freed = 0
        for _, size, path in old:
            if freed >= over:
                break
            if _unlink(path):
                removed += 1
                freed += size
        return removed, freed

    def _scan(self, remove_before: float | None) -> tuple[int, int]:
        """(files removed, bytes of the files kept)."""
        total = removed = 0
        stale = self._clock() - STALE_TEMP
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.startswith(TEMP_PREFIX):
                    if st.st_mtime < stale:
                        _unlink(entry.path)
                    continue
                if not _NAME.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                if remove_before is not None and st.st_mtime < remove_before:
                    if _unlink(entry.path):
                        removed += 1
                    continue
                total += st.st_size
        return removed, total


class FileWriter:
    """One download being written: hashed and bounded chunk by chunk, removed unless kept."""

    def __init__(self, files: AttachmentFiles) -> None:
        self._files = files
        self._hash = hashlib.sha256()
        self.size = 0
        self.path = files.directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd: int | None = os.open(self.path, flags, FILE_MODE)
            os.fchmod(self._fd, FILE_MODE)  # the mode given to open() is cut by the umask
        except OSError as exc:
            raise Refused(_write_reason(exc)) from None

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``. Raises :class:`Refused`: a bound would be passed, or the write
        failed; nothing of the chunk is counted then."""
        if self._fd is None:
            raise RuntimeError("the file is closed")
        self._files.reserve(self.size, len(chunk))
        try:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            raise Refused(_write_reason(exc)) from None
        self._hash.update(chunk)
        self.size += len(chunk)
        self._files.writing += len(chunk)

    async def keep(self) -> Stored:
        """Flush the file to disk and store it under its hash. Raises :class:`Refused`."""
        fd = self._fd
        if fd is None:
            raise RuntimeError("the file is closed")
        try:
            await asyncio.to_thread(os.fsync, fd)
            self._close()
            return self._files.keep(self.path, self._hash.hexdigest(), self.size)
        except OSError as exc:
            raise Refused(_write_reason(exc)) from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary file (a no-op once kept)."""
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            self._files.writing -= self.size


def _write_reason(exc: OSError) -> Reason:
    return Reason.NO_SPACE if exc.errno in _NO_SPACE else Reason.WRITE_FAILED


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def _unlink(path: str) -> bool:
    """Whether ``path`` was removed (it may be gone already, or not ours to remove)."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True
