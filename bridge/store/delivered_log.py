"""Delivered ids written ahead of their store commit, so that a sink worker need not wait for it.

A worker waits for its rows to be marked delivered before its next delivery, so that a crash
repeats at most the deliveries under way. Under load the mark's commit queues behind accepts for
milliseconds, and a worker whose request takes one spent most of its time waiting. One
``write(2)`` of the ids to an append-only file survives a crash of the process as that commit
does (the file is not synced: a power cut before the mark's commit may repeat those deliveries),
so the worker goes on after it and the store commits the mark behind it. The next exclusive open
of the store applies what a crash left in the file before anything is delivered.

Two files take turns, ``<database>.delivered-0`` and ``-1``: ids go to one until it has grown
past :data:`ROTATE_BYTES` and every id in the other is committed; the other is then emptied and
takes over. A file is emptied only once every id it holds is committed or also held by the other
(a carry, below), so a crash at any point leaves each uncommitted id in a file; a clean close
removes both.

Each file begins with a line naming the database it belongs to (``#`` and the token the store
keeps in its ``meta`` table), then holds one decimal id per line. A file naming another database
(say a log left beside a database that was then replaced) is not applied: its ids could name rows
of this one that were never delivered. A last line without its newline (a write cut by a power
cut) is not an id, and neither is any line that is not digits: both are skipped on reading, which
can only repeat a delivery. After a failed or short write the log takes no more ids until the file
it tore has been emptied (once every id in it is committed): an id written after a torn line could
run into it and name another row. Meanwhile the workers wait for each mark's commit; a disk that
stays full costs one refused ``write(2)`` per emptying, and one warning.

Only the event loop's thread uses a :class:`DeliveredLog`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import structlog

from bridge.state_files import DELIVERED_LOG

log = structlog.get_logger(__name__)

_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC

ROTATE_BYTES: Final = 1 << 20
"""A file is handed over to the other past this size (about 100,000 ids)."""


def log_paths(database: Path) -> tuple[Path, Path]:
    """The two files of the delivered log of the state database at ``database``."""
    first, second = (database.with_name(database.name + suffix) for suffix in DELIVERED_LOG)
    return first, second


def _header(token: str) -> bytes:
    return b"#" + token.encode("ascii") + b"\n"


def read_ids(database: Path, token: str) -> list[int]:
    """Every id in the delivered log of ``database``, whose token is ``token``, in file order;
    none when it has no files.

    Raises:
        OSError: a file exists but cannot be read.
    """
    ids: list[int] = []
    header = _header(token)
    for path in log_paths(database):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        if not data:
            continue
        if not data.startswith(header):
            log.warning(
                "store.delivered_log_foreign",
                path=str(path),
                effect="not applied: it names another database; its deliveries may be made again",
            )
            continue
        lines = data[len(header) :].split(b"\n")
        skipped = 0
        for line in lines[:-1]:  # the last is empty, or a line whose newline never came
            if line.isdigit():
                ids.append(int(line))
            else:
                skipped += 1
        if skipped or lines[-1]:
            log.warning(
                "store.delivered_log_damaged",
                path=str(path),
                skipped_lines=skipped + (1 if lines[-1] else 0),
            )
    return ids


class DeliveredLog:
    """The open delivered log of the state database at ``database``, whose token is ``token``;
    see the module.

    Create it once the ids a crash left are committed, or taken back to write here again: it
    empties both files.

    Raises:
        OSError: the files cannot be created or emptied.
    """

    def __init__(self, database: Path, token: str, *, rotate_bytes: int = ROTATE_BYTES) -> None:
        self._paths = log_paths(database)
        self._header = _header(token)
        self._rotate_bytes = rotate_bytes
        self._fds: list[int] = []
        self._current = 0
        self._size = [0, 0]
        self._open_ids = [0, 0]  # per file: ids written and not yet committed
        self._file_of: dict[int, int] = {}  # id written, not yet committed -> its file
        # A write to the current file (the only one written) failed: no id goes in until the
        # file is emptied.
        self._torn = False
        self._failing = False  # a write failed and none has gone through since: warned once
        self._untruncatable: set[int] = set()  # files whose emptying failed, warned of once
        try:
            for path in self._paths:
                self._fds.append(fd := os.open(path, _FLAGS, 0o600))
                if os.write(fd, self._header) != len(self._header):
                    raise OSError(f"short write to {path}")
        except OSError:
            for fd in self._fds:
                os.close(fd)
            raise

    def __contains__(self, delivery_id: int) -> bool:
        """Whether ``delivery_id`` was written here and its mark is not yet committed."""
        return delivery_id in self._file_of

    def __len__(self) -> int:
        return len(self._file_of)

    @property
    def taking(self) -> bool:
        """False after a write failed, until the file it tore is emptied: ids then wait for their
        commit, as without a log."""
        return not self._torn and bool(self._fds)

    def write(self, ids: Iterable[int]) -> bool:
        """Write ``ids`` delivered; True once they are in the file, False when they are not (the
        caller then waits for their commit)."""
        if not self.taking:
            return False
        # Each id once: an id counted twice in a file would keep it from ever being emptied.
        ids = [i for i in dict.fromkeys(ids) if i not in self._file_of]
        if not ids:
            return True
        data = b"".join(b"%d\n" % i for i in ids)
        current = self._current
        try:
            written = os.write(self._fds[current], data)
        except OSError as exc:
            written, error = -1, str(exc)
        else:
            error = "short write"
        if written != len(data):
            self._fail(current, error)
            return False
        self._size[current] += len(data)
        self._open_ids[current] += len(ids)
        for i in ids:
            self._file_of[i] = current
        if self._failing:
            self._failing = False
            log.info("store.delivered_log_resumed", path=str(self._paths[current]))
        return True

    def committed(self, ids: Iterable[int]) -> None:
        """The marks of ``ids`` are committed in the store: their lines may go."""
        for i in ids:
            f = self._file_of.pop(i, None)
            if f is not None:
                self._open_ids[f] -= 1
        if not self._fds:
            return  # closed: what is left stays for the next open
        if self._torn:
            self._mend()
            return
        current, other = self._current, 1 - self._current
        if self._open_ids[other] and self._size[current] >= self._rotate_bytes:
            self._carry(other, current)
        if self._open_ids[other] == 0 and self._size[other]:
            self._empty(other)
        if self._size[current] >= self._rotate_bytes:
            if self._open_ids[current] == 0:
                self._empty(current)
            elif self._size[other] == 0:
                self._current = other

    def close(self) -> None:
        """Close the files, removing each whose ids are all committed (a clean stop leaves none);
        the rest stay for the next open to apply."""
        fds, self._fds = self._fds, []  # closed from here on, even if a close below fails
        for f, fd in enumerate(fds):
            os.close(fd)
            if self._open_ids[f] == 0:
                try:
                    self._paths[f].unlink(missing_ok=True)
                except OSError as exc:  # its ids are committed: applied again, they change nothing
                    log.warning("store.delivered_log_not_removed", path=str(self._paths[f]),
                                error=str(exc))  # fmt: skip

    def _carry(self, src: int, dst: int) -> None:
        """Write the ids of ``src`` not yet committed into ``dst``, so that ``src`` can be emptied:
        a mark that never commits in this process (its sink's worker stopped by a reload) must
        not keep both files growing until the next start."""
        ids = [i for i, f in self._file_of.items() if f == src]
        data = b"".join(b"%d\n" % i for i in ids)
        try:
            written, error = os.write(self._fds[dst], data), "short write"
        except OSError as exc:
            written, error = -1, str(exc)
        if written != len(data):
            self._fail(dst, error)  # the ids stay in src: carried once dst is mended and full
            return
        self._size[dst] += len(data)
        self._open_ids[dst] += len(ids)
        self._open_ids[src] = 0
        for i in ids:
            self._file_of[i] = dst

    def _fail(self, f: int, error: str) -> None:
        self._torn = True
        if self._failing:
            return  # the same trouble again (a disk still full): warned already
        self._failing = True
        log.warning(
            "store.delivered_log_failed",
            path=str(self._paths[f]),
            error=error,
            effect="workers wait for each delivered mark's commit until the file is emptied and "
            "written again",
        )

    def _mend(self) -> None:
        """Empty the torn file once its ids are all committed; ids then go to it again, from a
        fresh line. A file that cannot be emptied stays torn: its cut line is never followed by
        another id."""
        if self._open_ids[self._current] == 0 and self._empty(self._current):
            self._torn = False

    def _empty(self, f: int) -> bool:
        """Truncate file ``f`` back to its first line; whether it was."""
        try:
            os.ftruncate(self._fds[f], len(self._header))  # O_APPEND writes after what is left
        except OSError as exc:
            # Its ids are committed: applied again at the next open, they change nothing. Not
            # emptied, it stays the other file and the current one grows meanwhile.
            if f not in self._untruncatable:
                self._untruncatable.add(f)
                log.warning("store.delivered_log_not_emptied", path=str(self._paths[f]),
                            error=str(exc))  # fmt: skip
            return False
        self._untruncatable.discard(f)
        self._size[f] = 0
        return True
