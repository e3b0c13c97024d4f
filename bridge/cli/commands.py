"""The command line's grammar: every command, its options, and where its code lives.

A command's module is imported only when that command runs (:class:`Lazy`): the commands an agent
or an operator runs often (``status``, ``trigger``, ``tail``) then start without the bridge's
server, its sinks, the simulator and the demo, which ``run`` alone needs. This module itself
imports nothing but the few constants its help texts name.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import urllib.parse
from typing import Final

from bridge import __version__
from bridge.activity import SOURCES
from bridge.cli.completion import add_completion_command
from bridge.cli.listen_plan import API_KEY_ENV, SECRET_ENV, URL_ENV
from bridge.cli.options import add_admin_options, add_config_option
from bridge.cli.verbosity import LOG_LEVELS
from bridge.protocol import DEFAULT_WS_URL

TRIGGER_TIMEOUT: Final = 30.0
"""How long ``trigger`` waits for its delivery, unless ``--timeout`` says otherwise."""
EVENTS_LIMIT: Final = 20
"""How many events ``events list`` shows, unless ``--limit`` says otherwise."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lazy:
    """A command's function, named by its module: imported when the command runs."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        code: int = getattr(importlib.import_module(self.module), self.function)(args)
        return code


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
        return p

    with_config(sub.add_parser("run", help="run the bridge in the foreground")).set_defaults(
        func=Lazy("bridge.cli.run", "cmd_run")
    )
    with_config(sub.add_parser("check", help="validate the config and print it, secrets masked"))
    sub.choices["check"].set_defaults(func=Lazy("bridge.cli.check", "cmd_check"))

    p = sub.add_parser("route-test", help="show which routes and sinks an event hits")
    add_config_option(p)
    p.add_argument("event", metavar="EVENT.json", help="an OpenMail event payload ('-': stdin)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=Lazy("bridge.cli.route_test", "cmd_route_test"))

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
    p.set_defaults(func=Lazy("bridge.cli.dlq", "cmd_dlq"))

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
    p.set_defaults(func=Lazy("bridge.cli.status", "cmd_status"))

    p = with_config(
        sub.add_parser("nats-status", help="show the NATS stream's and consumer's state")
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=Lazy("bridge.cli.nats_status", "cmd_nats_status"))

    p = sub.add_parser("simulator", help="run a local OpenMail stand-in (WebSocket + webhooks)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--port",
        type=_port,
        default=8025,
        help="the port to listen on (default 8025; 0: any free one, shown in the banner)",
    )
    p.add_argument("--api-key", metavar="KEY", help="accepted API key (default: the demo key)")
    p.add_argument(
        "--webhook-url", metavar="URL", type=_http_url, help="where to POST signed webhooks"
    )
    p.add_argument("--webhook-secret", metavar="SECRET", help="the secret that signs them")
    p.add_argument(
        "--reject-on-upgrade",
        action="store_true",
        help="answer a bad key with HTTP 401 (429 over the connection limit) on the upgrade "
        "instead of a 4001 (4008) close after the client's first frame",
    )
    p.set_defaults(func=Lazy("bridge.cli.simulator", "cmd_simulator"))

    p = sub.add_parser("demo", help="an offline tour: simulator, bridge, outage, webhook fallback")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the bridge up afterwards for /status and /metrics",
    )
    p.set_defaults(func=Lazy("bridge.cli.demo", "cmd_demo"))

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


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number from 0 to 65535: {text!r}")
    return int(text)


def _http_url(text: str) -> str:
    try:
        url = urllib.parse.urlsplit(text)
        usable = url.scheme in ("http", "https") and bool(url.hostname) and url.port != 0
    except ValueError:  # a port that is not a number, or out of range
        usable = False
    if not usable:
        raise argparse.ArgumentTypeError(f"not an http(s) URL with a host: {text!r}")
    return text


def add_listen_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "listen",
        help="forward OpenMail events to a local handler, no config file needed",
        description="Hold OpenMail's WebSocket stream and forward every event, re-signed as "
        f"OpenMail signs webhooks, to URL; one line per delivery on stdout. Reads ${API_KEY_ENV}. "
        "State (cursor, undelivered events) is kept per OpenMail URL and inboxes under "
        "$XDG_STATE_HOME/openmail-bridge/, so a restart loses nothing.",
    )
    p.add_argument("--forward-to", metavar="URL", required=True, help="your webhook handler")
    p.add_argument(
        "--inbox",
        metavar="ID",
        action="append",
        default=[],
        help="only this inbox's events (repeat for more; default: every inbox)",
    )
    p.add_argument(
        "--url",
        metavar="WS_URL",
        help=f"OpenMail's WebSocket URL (default: ${URL_ENV}, else {DEFAULT_WS_URL})",
    )
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--secret-env",
        metavar="VAR",
        default=SECRET_ENV,
        help=f"the variable holding the secret to sign with (default: {SECRET_ENV})",
    )
    secret.add_argument(
        "--secret",
        metavar="SECRET",
        help="the secret itself; it shows in the process list, prefer --secret-env",
    )
    p.set_defaults(func=Lazy("bridge.cli.listen", "cmd_listen"))


def add_tail_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``tail`` with the command line's subcommands."""
    p = sub.add_parser(
        "tail",
        help="print events as a running bridge accepts, delivers, retries and dead-letters them",
        description="Follows the running bridge's admin server (/api/stream) and prints one line "
        "per thing that happens to an event: accepted, duplicate, delivered, retrying, dead; "
        "--json prints one object per line with ts, kind, event_id, source, inbox_id, type, "
        "sink, attempt, error. Filters combine. When the bridge restarts, tail says so and "
        "reconnects (events in between are not shown: see 'events list' and 'dlq list'). "
        "Ctrl-C stops it. Exit 1 when no bridge answers, 2 when it wants a token or runs no "
        "sink of that name.",
    )
    add_config_option(p)
    p.add_argument("--inbox", metavar="ID", help="only this inbox's events")
    p.add_argument("--type", metavar="TYPE", help="only this event type, e.g. message.received")
    p.add_argument(
        "--source",
        choices=SOURCES,
        help="only events that came by this source (test: openmail-bridge trigger's)",
    )
    p.add_argument(
        "--sink",
        metavar="NAME",
        help="only this sink's deliveries, retries and dead letters (accepted and duplicate "
        "lines name no sink, so they are left out)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_admin_options(p)
    p.set_defaults(func=Lazy("bridge.cli.tail", "cmd_tail"))


def add_trigger_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``trigger`` with the command line's subcommands."""
    p = sub.add_parser(
        "trigger",
        help="send a test event to one sink of a running bridge and wait for its delivery",
        description="The running bridge spools a test message.received (evt_test_<uuid>) for "
        "SINK alone, whatever the routes say, and delivers it by that sink's rules (retries, "
        "dead letter); it is counted under source 'test'. Exit 0 delivered, 1 dead or still "
        "pending at --timeout, 2 an unknown sink or a usage or config problem.",
    )
    add_config_option(p)
    p.add_argument("--sink", metavar="NAME", required=True, help="the sink to send it to")
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        default=TRIGGER_TIMEOUT,
        help=f"how long to wait for the delivery (default {TRIGGER_TIMEOUT:g})",
    )
    add_admin_options(p)
    p.set_defaults(func=Lazy("bridge.cli.trigger", "cmd_trigger"))


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds <= 86400:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 86400 seconds")
    return seconds


def add_events_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``events`` with the command line's subcommands."""
    p = sub.add_parser(
        "events",
        help="list, show and replay events already delivered",
        description="The spool keeps the newest state.history events (default 1000) delivered "
        "to every sink they were routed to. 'list' shows them newest first, 'show' one with its "
        "payload, 'replay' delivers one again to a sink, under the same event id (X-Event-Id), "
        "dedup bypassed; a running bridge picks it up within a second. The state database must "
        "exist (the service's is /var/lib/openmail-bridge/bridge.db).",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = _action(actions, "list", "delivered events, newest first")
    listing.add_argument("--sink", metavar="NAME", help="only those delivered to this sink")
    listing.add_argument(
        "--limit",
        metavar="N",
        type=_count,
        default=EVENTS_LIMIT,
        help=f"at most N (default {EVENTS_LIMIT})",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    show = _action(actions, "show", "one delivered event and its payload")
    show.add_argument("event_id", metavar="EVENT_ID")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    replay = _action(actions, "replay", "deliver one event again to one sink")
    replay.add_argument("event_id", metavar="EVENT_ID")
    replay.add_argument("--sink", metavar="NAME", required=True, help="the sink to deliver to")
    p.set_defaults(func=Lazy("bridge.cli.events", "cmd_events"))


def _action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    p = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    add_config_option(p)
    p.add_argument(
        "--state",
        metavar="PATH",
        help="the state database (default: the config's state.path); no config is then needed",
    )
    return p


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number, at least 1: {text!r}")
    return int(text)
