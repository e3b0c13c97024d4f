"""The whole config, for the commands that run a bridge or reach its broker (``run``, ``check``,
``nats-status``): every key validated, every sink's options by its type, the log level the
command line gives (``--log-level``, ``-v``) in place of ``log.level``."""

from __future__ import annotations

import argparse
import dataclasses

from bridge.cli.config_file import find_config
from bridge.cli.verbosity import log_level
from bridge.config import Config, load_config
from bridge.sinks import SINK_TYPES


def daemon_config(args: argparse.Namespace) -> Config:
    """The config ``-c`` names, else the first default file that exists.

    Raises:
        ConfigError: none is found, or it cannot be read or is invalid.
    """
    config = load_config(find_config(args.config), sink_types=SINK_TYPES)
    level = log_level(args)
    if level is None:
        return config
    return dataclasses.replace(config, log=dataclasses.replace(config.log, level=level))
