"""Whether a directory can ever hold files, judged from the filesystem as it is: a file sink's,
an attachment ``dir``, the state database's.

A file sink creates its directory on its first event, so a missing one is fine if it can be
created then (``check`` warns: it may be created by then, or may not). A directory under a file,
or on a kernel pseudo-filesystem such as ``/proc`` or ``/sys``, can never hold it: every delivery
would fail and be retried until it is dead, so the config is refused.
"""

from __future__ import annotations

import enum
import os
import stat
from pathlib import Path
from typing import Final, NamedTuple

PSEUDO_FILESYSTEMS: Final = frozenset(
    {
        "proc",
        "sysfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "pstore",
        "bpf",
        "configfs",
        "fusectl",
        "efivarfs",
        "binfmt_misc",
        "mqueue",
    }
)
"""Filesystems whose directories the kernel makes up: no one can create a file sink's in them."""
_MOUNTINFO: Final = Path("/proc/self/mountinfo")


class Verdict(enum.Enum):
    USABLE = "usable"
    MAYBE = "maybe"
    """A warning: it may work when the bridge runs (created later, or run as another user)."""
    NEVER = "never"
    """An error: no file can ever be written there."""


class DirectoryCheck(NamedTuple):
    verdict: Verdict
    message: str


def fixed_directory(template: str) -> Path:
    """The directory part of a file sink's path that holds no placeholder such as
    ``{inbox_id}``: the one every file of the sink lives under."""
    directory = Path(template).parent
    for i, part in enumerate(directory.parts):
        if "{" in part:
            return Path(*directory.parts[:i])
    return directory


def check_directory(directory: Path) -> DirectoryCheck:
    """Whether files can be created in ``directory`` (created first, like a file sink does)."""
    existing = directory
    while True:
        try:
            mode = existing.stat().st_mode
            break
        except FileNotFoundError:
            if existing.parent == existing:
                return DirectoryCheck(Verdict.NEVER, f"{directory}: no part of it exists")
            existing = existing.parent
        except NotADirectoryError:
            existing = existing.parent  # reported below, once the file in the way is found
        except OSError as exc:
            return DirectoryCheck(
                Verdict.MAYBE, f"cannot look at {existing}: {exc.strerror or exc}"
            )
    if not stat.S_ISDIR(mode):
        return DirectoryCheck(
            Verdict.NEVER, f"{existing} is a file, so the directory {directory} can never exist"
        )
    fstype = filesystem_type(existing)
    if fstype in PSEUDO_FILESYSTEMS:
        # Said of the directory alone: it is a file sink's, an attachment dir or the state's.
        where = "is" if existing == directory else "would be"
        mount = "" if existing == directory else f" ({existing})"
        return DirectoryCheck(
            Verdict.NEVER,
            f"{directory} {where} on the kernel's {fstype} filesystem{mount}, where no file can "
            "ever be created",
        )
    if existing != directory:
        return DirectoryCheck(
            Verdict.MAYBE,
            f"the directory {directory} does not exist yet: it is created on the first event "
            f"if {existing} lets this user create it",
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        return DirectoryCheck(
            Verdict.MAYBE,
            f"the directory {directory} is not writable by this user (uid {os.getuid()}); "
            "the bridge must run as a user that may write there",
        )
    return DirectoryCheck(Verdict.USABLE, "")


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem ``path`` is on, from the mount table; None when unknown."""
    try:
        table = _MOUNTINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return mount_type(table, path.resolve())


def mount_type(mountinfo: str, path: Path) -> str | None:
    """The filesystem type of the longest mount point in ``mountinfo`` (proc(5)) above ``path``."""
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts = fields.split()
        if not sep or len(parts) < 5 or not rest.split():
            continue
        # Spaces and other awkward characters in a mount point are written as octal escapes.
        point = Path(parts[4].encode().decode("unicode_escape"))
        if (path == point or point in path.parents) and (
            best is None or len(point.parts) >= best[0]
        ):
            best = (len(point.parts), rest.split()[0])
    return best[1] if best else None
