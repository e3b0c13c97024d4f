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
    header, or cannot be looked at (the store says why when it opens it)."""
    try:
        # O_NONBLOCK: a FIFO would wait for a writer before it opens.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        head = os.pread(fd, len(SQLITE_HEADER), 0) if stat.S_ISREG(mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)
    if head is None:
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        return f"{path} is {kind}, not a state database file"
    if not head or head == SQLITE_HEADER:
        return None
    return (
        f"{path} is not a state database: it does not begin with the SQLite header, so it is "
        "some other file"
    )
