"""Command line: ``run``, ``check``, ``simulator``, ``demo``, ``dlq``, ``route-test``, ``status``,
``nats-status``, ``listen``, ``trigger``, ``events``, ``tail``, ``completion``.

One module per command; this one holds the parser and ``main``. The CLI is the only place that
touches signals or turns exceptions into exit codes (``exit_codes``): 0 success, 1 a runtime
failure (state in use, a port taken), 2 a configuration or usage error, 141 when the output's
reader went away (``| head``; ``pipes``).

``run``, ``check`` and ``nats-status`` read the whole config and refuse an invalid one; the
operator commands (``status``, ``dlq``, ``route-test``) read only the keys they use
(``operator_config``), so they work without the daemon's secrets and beside a broken file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from bridge import __version__, logs
from bridge.cli.check import cmd_check
from bridge.cli.completion import add_completion_command
from bridge.cli.config_file import find_config, print_config_error
from bridge.cli.demo import cmd_demo
from bridge.cli.dlq import cmd_dlq
from bridge.cli.events import add_events_command
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE
from bridge.cli.listen import add_listen_command
from bridge.cli.nats_status import cmd_nats_status
from bridge.cli.operator_config import add_admin_options, add_config_option
from bridge.cli.pipes import end_cut_output, flush_stdout
from bridge.cli.route_test import cmd_route_test
from bridge.cli.run import cmd_run
from bridge.cli.simulator import cmd_simulator
from bridge.cli.status import cmd_status
from bridge.cli.tail import add_tail_command
from bridge.cli.trigger import add_trigger_command
from bridge.cli.verbosity import LOG_LEVELS, log_level
from bridge.config import Config, load_config
from bridge.config.schema import LogLevel
from bridge.errors import BridgeError, ConfigError
from bridge.sinks import SINK_TYPES

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openmail-bridge",
        description="One durable, de-duplicated stream of OpenMail events, routed to your agent.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        help="log level of this command (for run: instead of the config's log.level)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v info, -vv debug (default warning; run: the config's log.level)",
    )
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

    p = sub.add_parser("route-test", help="show which routes and sinks an event hits")
    add_config_option(p)
    p.add_argument("event", metavar="EVENT.json", help="an OpenMail event payload ('-': stdin)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_route_test)

    p = sub.add_parser(
        "dlq",
        help="inspect and redrive dead letters; inspect and purge quarantined events",
        description="Dead letters are deliveries a sink refused or that ran out of retries: "
        "list, retry (back to pending) or purge them. Quarantined events are conflicts, an "
        "event_id already known with other content or another inbox: answered to OpenMail "
        "like duplicates, never delivered. 'list' shows both (quarantined last); with "
        "--quarantine, list and purge act on the quarantine only. The state database must "
        "exist (the service's is /var/lib/openmail-bridge/bridge.db).",
    )
    add_config_option(p)
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument(
        "--state",
        metavar="PATH",
        help="the state database (default: the config's state.path); no config is then needed",
    )
    p.add_argument("--sink", metavar="NAME", help="only this sink's dead letters")
    p.add_argument("--event-id", metavar="ID", help="only this event's")
    p.add_argument(
        "--all",
        action="store_true",
        help="purge: every dead letter (or quarantined event); without a filter, purge needs it",
    )
    p.add_argument(
        "--quarantine",
        action="store_true",
        help="list or purge quarantined events instead of dead letters (never retried)",
    )
    p.add_argument(
        "--pending",
        action="store_true",
        help="purge --sink NAME: also delete its pending rows (events never delivered to it), "
        "for a sink removed from the config once no running bridge delivers to it",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list: of dead letters, or of quarantined events with --quarantine",
    )
    p.set_defaults(func=cmd_dlq)

    p = sub.add_parser("status", help="show a running bridge's state")
    add_config_option(p)
    add_admin_options(p)
    p.add_argument(
        "--watch",
        metavar="SECONDS",
        type=_interval,
        nargs="?",
        const=2.0,
        help="show it again every SECONDS (default 2) until Ctrl-C",
    )
    p.add_argument("--json", action="store_true", help="the /status report as JSON")
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
    p.add_argument(
        "--reject-on-upgrade",
        action="store_true",
        help="answer a bad key with HTTP 401 (429 over the connection limit) on the upgrade "
        "instead of a 4001 (4008) close after the client's first frame",
    )
    p.set_defaults(func=cmd_simulator)

    p = sub.add_parser("demo", help="an offline tour: simulator, bridge, outage, webhook fallback")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the bridge up afterwards for /status and /metrics",
    )
    p.set_defaults(func=cmd_demo)

    add_listen_command(sub)
    add_trigger_command(sub)
    add_tail_command(sub)
    add_events_command(sub)
    add_completion_command(sub, parser)
    return parser


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= seconds <= 86400:
        raise argparse.ArgumentTypeError("must be between 0.1 and 86400 seconds")
    return seconds


def _with_log_level(config: Config, level: LogLevel | None) -> Config:
    if level is None:
        return config
    return dataclasses.replace(config, log=dataclasses.replace(config.log, level=level))


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _main(argv)
        finally:
            # Also after argparse's --help or a usage error (SystemExit): a reader gone by now
            # is caught below, not complained of by the interpreter's own flush at exit.
            flush_stdout()
    except BrokenPipeError:
        # Output cut short by its reader (`| head`): end quietly, as cat or grep would.
        code = end_cut_output()
        if code is None:  # not the output's pipe: a real failure, shown as one
            raise
        return code


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    level = log_level(args)
    # Logs go to stderr, never stdout (that belongs to --json output and the stdout sink); the
    # commands that run a bridge reconfigure this from their config.
    logs.configure(level or "warning", "auto")
    try:
        if getattr(args, "config_file", False):
            # Every command that reads a config fails the same way before doing anything else.
            try:
                path = find_config(args.config)
                config = load_config(path, sink_types=SINK_TYPES)
            except ConfigError as exc:
                print_config_error(exc, args.config)
                return EXIT_CONFIG
            code: int = args.func(args, _with_log_level(config, level))
        else:
            try:
                code = args.func(args)
            except ConfigError as exc:  # the operator commands read their config themselves
                print_config_error(exc, getattr(args, "config", None))
                return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BridgeError as exc:
        print(f"openmail-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code
