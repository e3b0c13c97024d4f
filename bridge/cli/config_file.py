"""Which configuration file a command reads, and how an invalid one is reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bridge.errors import ConfigError

DEFAULT_CONFIG_PATHS = ("config.yaml", "/etc/openmail-bridge/config.yaml")


def config_path(given: str | None) -> Path:
    """``-c``, else ``$OPENMAIL_BRIDGE_CONFIG``, else ``./config.yaml``, else the /etc one."""
    if given:
        return Path(given)
    env = os.environ.get("OPENMAIL_BRIDGE_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(DEFAULT_CONFIG_PATHS[0])


def print_config_error(exc: ConfigError, path: Path) -> None:
    print(f"openmail-bridge: {path}: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
