"""The files of a state database, all named after it: one definition for the store, which makes
them, and for the config, which keeps file sinks off them and refuses a ``state.path`` that names
some other file.

A file there that does not begin with SQLite's header is a wrong path (``state: {path:
./config.yaml}``), not a damaged database: the store refuses it rather than moving it aside as
it moves a corrupt database.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

SQLITE_HEADER: Final = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file (https://sqlite.org/fileformat.html)."""
WAL: Final = "-wal"
SHM: Final = "-shm"
LOCK: Final = ".lock"
"""``<database>.lock``: held (flock) by the one process that owns the database."""
DELIVERED_LOG: Final = (".delivered-0", ".delivered-1")
"""The two files of the delivered log, taking turns (``bridge.store.delivered_log``)."""
MOVED_ASIDE: Final = ".corrupt-"
"""``<database>.corrupt-<time>``: a corrupt database the store moved aside; every file so named
counts as one (``openmail_bridge_store_corrupt_files``) until an operator removes it."""
COMPANIONS: Final[Mapping[str, str]] = {
    WAL: "the state database's write-ahead log",
    SHM: "the state database's shared-memory index",
    "-journal": "the state database's rollback journal",
    LOCK: "the state database's lock file",
    **dict.fromkeys(DELIVERED_LOG, "the state database's delivered log"),
}
"""The files kept beside the database, by the suffix of their names, and what each is: SQLite's
(``-wal``, ``-shm``, and the ``-journal`` of a database not yet in WAL mode), the lock and the
delivered log."""


def foreign_file(path: Path) -> str | None:
    """Why the file at ``path`` cannot be a state database, or None when it may be one: it is
    missing (the store creates it), empty (SQLite makes one of it), begins with the SQLite
    header, is open in this process already, or cannot be looked at (the store says why when it
    opens it)."""
    try:
        info = os.stat(path)  # no descriptor: see open_here
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return f"{path} is {kind}, not a state database file"
    if open_here(info):
        return None  # this process's own database (a reload, a command beside a bridge)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        head = os.pread(fd, len(SQLITE_HEADER), 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not head.strip(b"\0") or head == SQLITE_HEADER:
        return None  # empty, SQLite's, or zeroed (a first page lost in a crash: a damaged one)
    return (
        f"{path} is not a state database: it does not begin with the SQLite header, so it is "
        "some other file (if it was the state database, move it aside yourself: a file that "
        "cannot be recognised is left as it is)"
    )


def open_here(info: os.stat_result) -> bool:
    """Whether this process holds a descriptor of the file ``info`` describes (true when that
    cannot be told).

    Closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included (https://sqlite.org/howtocorrupt.html, 2.2): a database this process has open must
    never be opened and closed beside SQLite, or a reload would leave the running store's
    connections unlocked."""
    try:
        descriptors = os.listdir("/dev/fd")
    except OSError:
        return True
    for name in descriptors:
        try:
            held = os.fstat(int(name))
        except (OSError, ValueError):
            continue  # the listing's own descriptor, closed by now
        if (held.st_dev, held.st_ino) == (info.st_dev, info.st_ino):
            return True
    return False
