"""Running a command as an unprivileged uid with ``setpriv``, the way systemd's ``DynamicUser=``
or a container's ``USER`` runs the bridge: no supplementary groups, no capability to write."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

EXECUTABLE = Path(sys.executable).parent / "openmail-bridge"
HAS_SETPRIV = shutil.which("setpriv") is not None
# A checkout may sit under a directory only root can enter (mktemp -d makes them 0700), where an
# installation would have the bridge in /opt or /usr/local. Then the uid is given
# CAP_DAC_READ_SEARCH, which lets it read the installed code and nothing more: every write still
# needs real permission.
READ_SEARCH = ("--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search")


def setpriv(uid: int) -> tuple[str, ...]:
    return ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")


@functools.cache
def _needs_read_search(uid: int) -> bool:
    # Through a shell, as the callers' commands may be: setpriv's own exec can succeed where a
    # second exec, by the unprivileged process, is refused.
    probe = subprocess.run([*setpriv(uid), "sh", "-c", 'exec "$@"', "sh", str(EXECUTABLE),
                            "--version"], capture_output=True, timeout=60)  # fmt: skip
    return probe.returncode != 0


def as_uid(uid: int, cmd: list[str]) -> list[str]:
    """``cmd`` run as ``uid`` (its own group), able to read the bridge's code wherever it lives."""
    extra = READ_SEARCH if _needs_read_search(uid) else ()
    return [*setpriv(uid), *extra, *cmd]
