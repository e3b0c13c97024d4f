"""The command line's exit codes: 0 success, 1 a runtime failure (state in use, a port taken,
no bridge answering), 2 a configuration or usage error."""

from __future__ import annotations

import sys
from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2


def refuse(message: str, code: int = EXIT_CONFIG) -> int:
    """Say why a command stops, on stderr, and return its exit code (usage error by default)."""
    print(f"openmail-bridge: {message}", file=sys.stderr)
    return code
