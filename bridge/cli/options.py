"""The options several commands share: which config file (``-c``), and how to reach a running
bridge's admin server without one (``--admin``, ``--token``, ``$OPENMAIL_BRIDGE_ADMIN_TOKEN``)."""

from __future__ import annotations

import argparse
from typing import Final

TOKEN_ENV: Final = "OPENMAIL_BRIDGE_ADMIN_TOKEN"  # noqa: S105 (a variable's name)
"""The admin token for the commands that talk to the admin server, when ``--token`` is not given
(it keeps the token out of the process list)."""


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: $OPENMAIL_BRIDGE_CONFIG, ./config.yaml, "
        "/etc/openmail-bridge/config.yaml); only the keys this command uses are read",
    )


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    """``--admin`` and ``--token``: reach a running bridge without reading the config."""
    parser.add_argument(
        "--admin",
        metavar="URL",
        help="the admin server, e.g. http://127.0.0.1:9464 (default: the config's admin.listen)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"the admin token (default: ${TOKEN_ENV}, else the config's admin.token); "
        "shows in the process list, prefer the variable",
    )
