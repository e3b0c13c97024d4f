"""``check``: validate the configuration and print it, secrets masked, with its warnings."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bridge.cli.config_file import config_path
from bridge.cli.daemon_config import daemon_config
from bridge.cli.exit_codes import EXIT_OK
from bridge.config import config_warnings, describe
from bridge.config.directories import Verdict, check_directory
from bridge.printable import printable


def cmd_check(args: argparse.Namespace) -> int:
    config = daemon_config(args)
    print(f"{printable(config_path(args.config))}: configuration is valid", file=sys.stderr)
    # Valid but unsafe is still valid: warnings are printed, the exit code stays 0. They quote
    # paths from the file, escaped as its errors are (print_config_error).
    warnings = [str(warning) for warning in config_warnings(config)]
    if problem := state_directory_problem(config.state.path):
        warnings.append(f"state.path: {problem}")
    if problem := floor_problem(config.state.path, config.state.min_free):
        warnings.append(f"state.min_free: {problem}")
    for warning in warnings:
        print(f"openmail-bridge: warning: {printable(warning)}", file=sys.stderr)
    print(json.dumps(describe(config), indent=2))
    return EXIT_OK


def state_directory_problem(database: Path) -> str | None:
    """Why this user could not create or write the state database's directory; None when it can.

    The bridge creates that directory when it starts and cannot start without it, so ``check``,
    run as the service user (``ExecStartPre=``), says so before the start would fail. A warning
    only: ``check`` may be run by another user than the service's. Nothing is created. (One
    that can never exist, under a file or in ``/proc``, the config refuses already:
    ``bridge.config.files``.)
    """
    directory = database.parent
    verdict, message = check_directory(directory)
    if verdict is Verdict.USABLE:
        return None
    existing = _nearest_existing(directory)
    if verdict is Verdict.NEVER or existing == directory:
        return message
    # Missing, which check_directory (made for file sinks, created later) leaves at "maybe": the
    # bridge makes it now, so what counts is whether this user may create it where it would go.
    verdict, message = check_directory(existing)
    if verdict is Verdict.USABLE:
        return None
    return f"the directory {directory} does not exist and cannot be created: {message}"


def floor_problem(database: Path, min_free: int) -> str | None:
    """Why ``min_free`` can never be met on the filesystem that would hold the database (it is
    as large as the whole filesystem): the bridge would refuse every event; None otherwise."""
    try:
        st = os.statvfs(_nearest_existing(database.parent))
    except OSError:
        return None  # not this user's to look at; state_directory_problem says so
    size = st.f_blocks * st.f_frsize
    if min_free < size:
        return None
    return (
        f"{min_free} bytes, but the filesystem holding {database.parent} is {size} bytes in "
        "all: every event would be refused; lower it (0 keeps no floor)"
    )


def _nearest_existing(directory: Path) -> Path:
    """``directory`` or its nearest ancestor that exists (itself when it cannot be looked at)."""
    existing = directory
    while existing.parent != existing:
        try:
            existing.stat()
        except (FileNotFoundError, NotADirectoryError):
            existing = existing.parent
        except OSError:
            break  # not this user's to look at; check_directory has said so
        else:
            break
    return existing
