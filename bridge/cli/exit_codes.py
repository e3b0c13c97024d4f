"""The command line's exit codes: 0 success, 1 a runtime failure (state in use, a port taken,
no bridge answering), 2 a configuration or usage error, 141 output cut short by a closed pipe
(``pipes``)."""

from __future__ import annotations

import signal
import sys
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
EXIT_BROKEN_PIPE: Final = 128 + signal.SIGPIPE
"""141: what a shell reports for a tool killed by SIGPIPE (``yes | head``); see ``pipes``."""


def refuse(message: str, code: int = EXIT_CONFIG) -> int:
    """Say why a command stops, on stderr, and return its exit code (usage error by default)."""
    print(f"openmail-bridge: {message}", file=sys.stderr)
    return code
