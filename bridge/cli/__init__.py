"""Command line: ``run``, ``check``, ``simulator``, ``demo``, ``dlq``, ``route-test``, ``status``,
``nats-status``.

One module per command; this one holds the parser and ``main``. The CLI is the only place that
touches signals or turns exceptions into exit codes (``exit_codes``): 0 success, 1 a runtime
failure (state in use, a port taken), 2 a configuration or usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence

from bridge import __version__, logs
from bridge.cli.check import cmd_check
from bridge.cli.config_file import config_path, print_config_error
from bridge.cli.demo import cmd_demo
from bridge.cli.dlq import cmd_dlq
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE
from bridge.cli.nats_status import cmd_nats_status
from bridge.cli.route_test import cmd_route_test
from bridge.cli.run import cmd_run
from bridge.cli.simulator import cmd_simulator
from bridge.cli.status import cmd_status
from bridge.config import load_config
from bridge.errors import BridgeError, ConfigError
from bridge.sinks import SINK_TYPES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openmail-bridge",
        description="One durable, de-duplicated stream of OpenMail events, routed to your agent.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="config file (default: $OPENMAIL_BRIDGE_CONFIG, ./config.yaml, "
            "/etc/openmail-bridge/config.yaml)",
        )
        p.set_defaults(config_file=True)
        return p

    with_config(sub.add_parser("run", help="run the bridge in the foreground")).set_defaults(
        func=cmd_run
    )
    with_config(sub.add_parser("check", help="validate the config and print it, secrets masked"))
    sub.choices["check"].set_defaults(func=cmd_check)

    p = with_config(sub.add_parser("route-test", help="show which routes and sinks an event hits"))
    p.add_argument("event", metavar="EVENT.json", help="an OpenMail event payload ('-': stdin)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_route_test)

    p = with_config(
        sub.add_parser(
            "dlq",
            help="inspect and redrive dead letters; inspect and purge quarantined events",
            description="Dead letters are deliveries a sink refused or that ran out of retries: "
            "list, retry (back to pending) or purge them. Quarantined events are conflicts, an "
            "event_id already known with other content or another inbox: answered to OpenMail "
            "like duplicates, never delivered. 'list' shows both (quarantined last); with "
            "--quarantine, list and purge act on the quarantine only.",
        )
    )
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument("--sink", metavar="NAME")
    p.add_argument("--event-id", metavar="ID")
    p.add_argument(
        "--quarantine",
        action="store_true",
        help="list or purge quarantined events instead of dead letters (never retried)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list: of dead letters, or of quarantined events with --quarantine",
    )
    p.set_defaults(func=cmd_dlq)

    p = with_config(sub.add_parser("status", help="show a running bridge's state"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = with_config(
        sub.add_parser("nats-status", help="show the NATS stream's and consumer's state")
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_nats_status)

    p = sub.add_parser("simulator", help="run a local OpenMail stand-in (WebSocket + webhooks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8025)
    p.add_argument("--api-key", metavar="KEY", help="accepted API key (default: the demo key)")
    p.add_argument("--webhook-url", metavar="URL")
    p.add_argument("--webhook-secret", metavar="SECRET")
    p.set_defaults(func=cmd_simulator)

    p = sub.add_parser("demo", help="an offline tour: simulator, bridge, outage, webhook fallback")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the bridge up afterwards for /status and /metrics",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs go to stderr, never stdout (that belongs to --json output and the stdout sink); the
    # commands that run a bridge reconfigure this from their config.
    logs.configure("warning", "auto")
    try:
        if getattr(args, "config_file", False):
            # Every command that reads a config fails the same way before doing anything else.
            path = config_path(args.config)
            try:
                config = load_config(path, sink_types=SINK_TYPES)
            except ConfigError as exc:
                print_config_error(exc, path)
                return EXIT_CONFIG
            code: int = args.func(args, config)
        else:
            code = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BridgeError as exc:
        print(f"openmail-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return code
