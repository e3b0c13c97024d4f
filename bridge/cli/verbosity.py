"""The global ``--log-level`` / ``-v`` options, shared by every command that logs."""

from __future__ import annotations

import argparse
from typing import Final, get_args

from bridge.config.schema import LogLevel

LOG_LEVELS: Final[tuple[LogLevel, ...]] = get_args(LogLevel)
_VERBOSITY: Final[tuple[LogLevel, ...]] = ("warning", "info", "debug")


def log_level(args: argparse.Namespace) -> LogLevel | None:
    """The level ``--log-level`` or ``-v`` asks for; None when neither is given."""
    for level in LOG_LEVELS:
        if args.log_level == level:
            return level
    verbose: int = args.verbose
    return _VERBOSITY[min(verbose, len(_VERBOSITY) - 1)] if verbose else None
