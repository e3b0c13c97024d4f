"""``check``: validate the configuration and print it, secrets masked, with its warnings."""

from __future__ import annotations

import argparse
import json
import sys

from bridge.cli.config_file import config_path
from bridge.cli.exit_codes import EXIT_OK
from bridge.config import Config, config_warnings, describe


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    print(f"{config_path(args.config)}: configuration is valid", file=sys.stderr)
    # Valid but unsafe is still valid: warnings are printed, the exit code stays 0.
    for warning in config_warnings(config):
        print(f"openmail-bridge: warning: {warning}", file=sys.stderr)
    print(json.dumps(describe(config), indent=2))
    return EXIT_OK
