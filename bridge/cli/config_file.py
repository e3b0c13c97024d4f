"""Which configuration file a command reads, and how an invalid one is reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Final

from bridge.errors import ConfigError
from bridge.printable import printable

CONFIG_ENV: Final = "OPENMAIL_BRIDGE_CONFIG"
DEFAULT_CONFIG_PATHS = ("config.yaml", "/etc/openmail-bridge/config.yaml")


class NoConfigFound(ConfigError):
    """No ``-c``, no ``$OPENMAIL_BRIDGE_CONFIG``, and none of the default files exists."""

    def __init__(self) -> None:
        # Every place looked at, ./config.yaml made absolute: "here" is wherever the command
        # ran, which under a service manager or cron is not always the directory one thinks.
        looked = ", ".join(str(Path(candidate).absolute()) for candidate in DEFAULT_CONFIG_PATHS)
        super().__init__(
            [
                f"no config file found: looked at {looked} (${CONFIG_ENV} is not set); "
                f"give -c FILE or set ${CONFIG_ENV}"
            ]
        )


class ConfigUnusable(ConfigError):
    """A config a command cannot use (not found, not read, not YAML, or a key it needs broken),
    with what to give it instead to do without the config."""

    def __init__(self, cause: ConfigError, instead: str) -> None:
        super().__init__(cause.problems)
        self.cause = cause
        self.instead = instead
        """A sentence, e.g. ``to look without the config, give --state PATH``."""


def config_path(given: str | None) -> Path:
    """``-c``, else ``$OPENMAIL_BRIDGE_CONFIG``, else ``./config.yaml``, else the /etc one."""
    if given:
        return Path(given)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in DEFAULT_CONFIG_PATHS:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(DEFAULT_CONFIG_PATHS[0])


def named_config(given: str | None) -> bool:
    """Whether ``-c`` or ``$OPENMAIL_BRIDGE_CONFIG`` names the file: then it must be readable,
    and the default files are not looked at (a wrong name is an error, not a fall-back)."""
    return bool(given or os.environ.get(CONFIG_ENV))


def find_config(given: str | None) -> Path:
    """The file ``config_path`` picks, when there is one to read.

    Raises:
        NoConfigFound: nothing names a file and no default file exists.
    """
    path = config_path(given)
    if not named_config(given) and not path.exists():
        raise NoConfigFound
    return path


def print_config_error(exc: ConfigError, given: str | None) -> None:
    """Report ``exc`` about the file ``given`` (``-c``) or the defaults pick.

    Every line is shown with its control characters escaped: a problem quotes the file (a sink
    named with an ESC in it), and a file name is anyone's, so neither may drive the terminal.
    """
    if isinstance(exc, ConfigUnusable):
        print_config_error(exc.cause, given)
        print(f"openmail-bridge: {printable(exc.instead)}", file=sys.stderr)
        return
    if isinstance(exc, NoConfigFound):  # there is no file to name as invalid
        print(f"openmail-bridge: {printable(exc)}", file=sys.stderr)
        return
    path = printable(config_path(given))
    origin = f" (from ${CONFIG_ENV})" if not given and os.environ.get(CONFIG_ENV) else ""
    print(f"openmail-bridge: {path}{origin}: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {printable(problem)}", file=sys.stderr)
