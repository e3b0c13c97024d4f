"""The files a config names, judged against the filesystem and against each other: ``state.path``
must name a SQLite database or nothing yet, in a directory that can exist, and no file sink may
write the state database's own files or a file another sink writes.

A file that is there but does not begin with SQLite's header is a wrong path (``state: {path:
./config.yaml}``), not a damaged database: the store refuses it rather than moving it aside as
it moves a corrupt database. A file sink on the database, its WAL or its delivered log would
damage the spool; two sinks on one file would interleave, and rotate, each other's lines.
Paths are compared as the daemon opens them: absolute, symbolic links followed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from bridge.config.directories import Verdict, check_directory
from bridge.config.schema import SinkConfig
from bridge.config.walker import Walker
from bridge.state_files import COMPANIONS, MOVED_ASIDE, foreign_file

_SPOOL: Final = "a file sink must not write the store's files"
_SHARED: Final = "two sinks cannot write one file (their lines would interleave)"


def check_state_path(walker: Walker, database: Path) -> None:
    """``state.path``: a file there that is no database, or a directory that can never exist,
    is a configuration error. Whatever may change (permissions, a directory not made yet) is
    left to ``check``'s warnings and the store's start."""
    if (problem := foreign_file(database)) is not None:
        walker.fail("state.path", problem)
        return
    verdict, message = check_directory(database.parent)
    if verdict is Verdict.NEVER:
        walker.fail("state.path", f"{message}: the state database {database} cannot be there")


def check_sink_files(
    walker: Walker, sinks: Mapping[str, SinkConfig[object]], database: Path | None
) -> None:
    """No file sink writes one of the state database's files (``database``: None when
    ``state.path`` is invalid) or a file another sink writes, rotated copies included. Each
    clash is said once, of the later sink."""
    state_files = _state_files(database) if database is not None else {}
    claimed: dict[Path, tuple[str, bool]] = {}  # file -> (sink, whether only its rotation)
    for name, sink in sinks.items():
        key = f"sinks.{name}.path"
        named: set[str] = set()  # the sinks this one was found to clash with already
        path = getattr(sink.options, "path", None)
        for file, rotated in _sink_files(path, sink.options):
            real = canonical(file)
            mine = f"rotating {path} writes {file}, which is" if rotated else f"{file} is"
            what = state_files.get(real) or _moved_aside(real, database)
            if what is not None:
                walker.fail(key, f"{mine} {what} (state.path {database}): {_SPOOL}")
                break
            other, other_rotated = claimed.setdefault(real, (name, rotated))
            if other == name or other in named:
                continue
            named.add(other)
            theirs = (
                f"where sink {other}'s rotation moves its file"
                if other_rotated
                else f"{'' if rotated else 'also '}the path of sink {other}"
            )
            walker.fail(key, f"{mine} {theirs}: {_SHARED}")


def canonical(path: Path) -> Path:
    """``path`` as the daemon would open it: absolute, ``..`` and symbolic links resolved."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        return Path(os.path.normpath(path.absolute()))


def _state_files(database: Path) -> dict[Path, str]:
    """The database and the files beside it, by the paths they have once links are followed:
    SQLite names its files after the database's real path, the store after the path given."""
    found: dict[Path, str] = {}
    for base in dict.fromkeys((database, canonical(database))):
        found.setdefault(canonical(base), "the state database")
        for suffix, what in COMPANIONS.items():
            found.setdefault(canonical(base.with_name(base.name + suffix)), what)
    return found


def _moved_aside(file: Path, database: Path | None) -> str | None:
    if database is None:
        return None
    real = canonical(database)
    if file.parent == real.parent and file.name.startswith(real.name + MOVED_ASIDE):
        return "where the store moves a corrupt state database aside"
    return None


def _sink_files(path: object, options: object) -> Iterator[tuple[Path, bool]]:
    """Every file a sink writes, read off its options by name as ``loader`` does (``path``, a
    path, makes it a file sink), each with whether only rotation writes it: ``path``, then the
    copies rotation keeps (``path.1`` ... ``path.<backups>``, once ``max_bytes`` is set)."""
    if not isinstance(path, Path):
        return
    yield path, False
    backups = getattr(options, "backups", 0)
    if getattr(options, "max_bytes", None) and isinstance(backups, int):
        for index in range(1, backups + 1):
            yield path.with_name(f"{path.name}.{index}"), True
