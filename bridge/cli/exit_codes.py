"""The command line's exit codes: 0 success, 1 a runtime failure (state in use, a port taken,
no bridge answering), 2 a configuration or usage error."""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_CONFIG: Final = 2
