"""The config of the operator commands (``status``, ``dlq``, ``route-test``): read leniently
(``bridge.config.lenient``), and only when there is one, since ``--admin`` / ``--state`` may
say all a command needs."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from bridge.cli.config_file import (
    CONFIG_ENV,
    ConfigUnusable,
    NoConfigFound,
    find_config,
    named_config,
)
from bridge.cli.exit_codes import refuse
from bridge.cli.options import TOKEN_ENV
from bridge.config import STATE, OperatorConfig, read_operator_config
from bridge.errors import ConfigError
from bridge.state_files import foreign_file
from bridge.store import Store

SERVICE_STATE_PATH: Final = Path("/var/lib/openmail-bridge/bridge.db")
"""Where the systemd unit and the container image keep the state (``StateDirectory=``)."""
ADMIN_INSTEAD: Final = f"--admin URL (and --token, or ${TOKEN_ENV})"
"""What the commands that talk to the admin server take instead of a config."""
STATE_INSTEAD: Final = "--state PATH"
"""What the commands that open the state database take instead of a config."""


def operator_config(
    args: argparse.Namespace, *, needed: bool, instead: str | None = None
) -> OperatorConfig | None:
    """The config named by ``-c`` or ``$OPENMAIL_BRIDGE_CONFIG`` (it must be readable), else the
    first default file that exists; None when there is none, or it is unreadable, and ``needed``
    is false (the flags say all the command needs). ``instead``: the options that do without a
    config (``ADMIN_INSTEAD``, ``STATE_INSTEAD``), which the error then names.

    Raises:
        ConfigError: the file cannot be read or parsed, or none is found while ``needed``.
    """
    explicit = named_config(args.config)
    try:
        path = find_config(args.config)
    except NoConfigFound as exc:
        if not needed:
            return None
        raise _unusable(exc, args, instead, needed=needed) from None
    try:
        return read_operator_config(path)
    except ConfigError as exc:
        if needed or explicit:
            raise _unusable(exc, args, instead, needed=needed) from None
        return None


def _unusable(
    exc: ConfigError, args: argparse.Namespace, instead: str | None, *, needed: bool
) -> ConfigError:
    """``exc``, with how to do without the config when the command has options for that: those
    options if they were not given, and not naming a config (a named one must be readable)."""
    if instead is None:
        return exc
    steps = [f"give {instead}"] if needed else []
    if named_config(args.config):
        steps.append("leave out -c" if args.config else f"unset ${CONFIG_ENV}")
    return ConfigUnusable(exc, f"to look without the config, {' and '.join(steps)}")


def require(config: OperatorConfig, part: str, instead: str) -> None:
    """``config.require(part)``, its error naming the options that do without a config."""
    try:
        config.require(part)
    except ConfigError as exc:
        raise ConfigUnusable(exc, f"to look without the config, give {instead}") from None


def state_path(args: argparse.Namespace, config: OperatorConfig | None) -> Path:
    """The state database ``--state`` names, else the config's ``state.path``."""
    if args.state is not None:
        return Path(args.state)
    assert config is not None  # operator_config(needed=True) gave one
    require(config, STATE, STATE_INSTEAD)
    return config.state_path


def _origin(args: argparse.Namespace, config: OperatorConfig | None) -> str:
    """Where the state path came from, for an error about it."""
    if args.state is not None:
        return "--state"
    if config is not None and config.source is not None:
        return f"state.path of {config.source}, or its default"
    return "the config"


def missing_state(path: Path, args: argparse.Namespace, config: OperatorConfig | None) -> int:
    """Refuse (exit 2) a state database that is not there, saying where the path came from:
    opening it would create an empty one and find nothing in it."""
    origin = _origin(args, config)
    usual = ""
    if path.absolute() != SERVICE_STATE_PATH:
        usual = (
            f"; the service keeps its state at {SERVICE_STATE_PATH}: give "
            f"--state {SERVICE_STATE_PATH} (run as a user that may read it)"
        )
    return refuse(f"no state database at {path} (from {origin}){usual}")


async def open_state(args: argparse.Namespace, config: OperatorConfig | None) -> Store | None:
    """The state database, opened shared beside a running bridge; None (the refusal printed)
    when it is not there (opening would create an empty one and find nothing in it) or is some
    other file."""
    path = state_path(args, config)
    if not path.is_file():
        missing_state(path, args, config)
        return None
    if (problem := foreign_file(path)) is not None:
        # A wrong path, not a damaged database: the daemon would refuse it too, never move it.
        refuse(f"{problem} (the path is from {_origin(args, config)})")
        return None
    return await Store.open(path, exclusive=False)


def unknown_sink(name: str, known: Iterable[str]) -> int:
    """Refuse (exit 2) a ``--sink`` no one knows, listing the known ones."""
    names = ", ".join(sorted(known)) or "none"
    return refuse(f"no sink named {name!r} (known sinks: {names})")
