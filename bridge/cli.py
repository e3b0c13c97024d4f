"""Command line: ``run``, ``check``, ``simulator``, ``demo``, ``dlq``, ``route-test``, ``status``.

The only module that touches signals or turns exceptions into exit codes: 0 success, 1 a runtime
failure (state in use, a port taken), 2 a configuration or usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import structlog

from bridge import __version__, logs
from bridge.config import Config, describe, load_config
from bridge.errors import BridgeError, ConfigError, EventError, StoreError
from bridge.loop_errors import LoopErrorReporter
from bridge.memory import tune_malloc

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEFAULT_CONFIG_PATHS = ("config.yaml", "/etc/openmail-bridge/config.yaml")
log = structlog.get_logger("bridge.cli")


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


def _print_config_error(exc: ConfigError, path: Path) -> None:
    print(f"openmail-bridge: {path}: invalid configuration:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)


# --- run ---------------------------------------------------------------------------------------


async def _run(config: Config) -> int:
    from bridge.supervisor import Supervisor
    from bridge.systemd import Notifier

    supervisor = Supervisor(config, notifier=Notifier())
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(LoopErrorReporter())
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_stop(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("bridge.signal", signal=signal.Signals(signum).name, action="drain and stop")
            supervisor.request_stop()
        elif main_task is not None:
            log.warning("bridge.signal", signal=signal.Signals(signum).name, action="force stop")
            main_task.cancel()

    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        # The loop holds tasks only weakly: keep a reference until the reload is done.
        task = asyncio.ensure_future(supervisor.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        await supervisor.start()
    except (StoreError, OSError) as exc:
        log.error("bridge.start_failed", error=str(exc))
        print(f"openmail-bridge: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        await supervisor.wait_stop_requested()
    except asyncio.CancelledError:
        pass
    finally:
        # A second signal cancels the drain, but the store is still closed cleanly.
        stopper = asyncio.ensure_future(supervisor.stop())
        while not stopper.done():
            try:
                await asyncio.shield(stopper)
            except asyncio.CancelledError:
                supervisor.abort()
    return EXIT_OK


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    logs.configure(config.log.level, config.log.format)
    # A file-size limit should fail a write (EFBIG, handled as a store error), not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    tune_malloc()
    return asyncio.run(_run(config))


# --- check -------------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    from bridge.config.loader import config_warnings

    print(f"{config_path(args.config)}: configuration is valid", file=sys.stderr)
    # Valid but unsafe is still valid: warnings are printed, the exit code stays 0.
    for warning in config_warnings(config):
        print(f"openmail-bridge: warning: {warning}", file=sys.stderr)
    print(json.dumps(describe(config), indent=2))
    return EXIT_OK


# --- route-test --------------------------------------------------------------------------------


def cmd_route_test(args: argparse.Namespace, config: Config) -> int:
    from bridge.events import Origin, parse_event
    from bridge.routing import Router

    try:
        raw = sys.stdin.buffer.read() if args.event == "-" else Path(args.event).read_bytes()
        event = parse_event(raw, Origin.WEBHOOK, require_type=False)
    except OSError as exc:
        print(f"openmail-bridge: cannot read {args.event}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EventError as exc:
        print(f"openmail-bridge: {args.event}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    router = Router(config.routes)
    routes = [r.name for r in router.matching(event)]
    sinks = list(router(event))
    if args.json:
        print(json.dumps({"event_id": event.event_id, "routes": routes, "sinks": sinks}))
    else:
        print(f"event {event.event_id} ({event.type}, inbox {event.inbox_id})")
        for route in router.routes:
            mark = "match" if route.name in routes else "no match"
            print(f"  route {route.name}: {mark}")
        print(f"  sinks: {', '.join(sinks) if sinks else '(none: the event would be unrouted)'}")
    return EXIT_OK


# --- dlq -----------------------------------------------------------------------------------------


async def _dlq(config: Config, args: argparse.Namespace) -> int:
    from bridge.delivery import sink_credentials
    from bridge.redact import scrub_text
    from bridge.store import Store
    from bridge.supervisor import config_secrets, limits_of

    # Errors are masked when recorded; masked again on the way out for rows an older version
    # recorded, or recorded before a credential was added to the config.
    known = config_secrets(config)
    for sink in config.sinks.values():
        known += sink_credentials(sink)
    if args.quarantine and args.action == "retry":
        print(
            "openmail-bridge: quarantined events are never delivered: inspect them with "
            "'dlq list --quarantine' and remove them with 'dlq purge --quarantine'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.quarantine and args.sink is not None:
        print("openmail-bridge: --sink does not apply to quarantined events", file=sys.stderr)
        return EXIT_CONFIG
    store = await Store.open(config.state.path, limits_of(config), exclusive=False)
    try:
        if args.action == "list":
            dead: list[dict[str, object]] | None = None
            quarantined: list[dict[str, object]] | None = None
            if not args.quarantine:
                dead = [
                    {
                        "sink": r.delivery.sink,
                        "event_id": r.delivery.event_id,
                        "type": r.delivery.type,
                        "inbox_id": r.delivery.inbox_id,
                        "attempts": r.delivery.attempts,
                        "error": scrub_text(r.error, known),
                        "dead_at": r.dead_at,
                    }
                    for r in await store.dlq_list(sink=args.sink, event_id=args.event_id)
                ]
            # Quarantined events belong to no sink: a --sink listing leaves them out.
            if args.quarantine or args.sink is None:
                quarantined = [
                    {
                        "event_id": q.event_id,
                        "reason": q.reason,
                        "type": q.type,
                        "inbox_id": q.inbox_id,
                        "source": q.origin.value,
                        "dedup_key": q.dedup_key,
                        "content_id": q.content_id,
                        "received_at": q.received_at,
                        "quarantined_at": q.quarantined_at,
                        "payload_kept": q.payload is not None,
                    }
                    for q in await store.quarantine_list(event_id=args.event_id)
                ]
            _print_dlq_list(dead, quarantined, as_json=args.json)
        elif args.action == "retry":
            count = await store.dlq_retry(sink=args.sink, event_id=args.event_id)
            print(json.dumps({"retried": count}) if args.json else f"{count} redriven")
        elif args.quarantine:
            count = await store.quarantine_purge(event_id=args.event_id)
            print(json.dumps({"purged": count}) if args.json else f"{count} purged")
        else:
            # Like list and retry, purge without a filter takes every dead letter.
            count = await store.dlq_purge(sink=args.sink, event_id=args.event_id)
            if args.sink is not None and args.sink not in config.sinks:
                count += await store.drop_sink(args.sink)  # a removed sink's pending rows too
            print(json.dumps({"purged": count}) if args.json else f"{count} purged")
    finally:
        await store.close()
    return EXIT_OK


def _print_dlq_list(
    dead: list[dict[str, object]] | None,
    quarantined: list[dict[str, object]] | None,
    *,
    as_json: bool,
) -> None:
    """Dead letters, then quarantined events (either may be left out: None). ``as_json`` prints
    one list: the dead letters when there are any to show, else the quarantined events."""
    if as_json:
        print(json.dumps(dead if dead is not None else quarantined))
        return
    if dead is not None:
        if not dead:
            print("no dead letters")
        for item in dead:
            print(
                f"{item['sink']}\t{item['event_id']}\t{item['type']}\t"
                f"attempts={item['attempts']}\t{item['error']}"
            )
    if quarantined is None:
        return
    if dead is None and not quarantined:
        print("no quarantined events")
    elif dead is not None and quarantined:
        print(f"quarantined, never delivered ({len(quarantined)}):")
    for item in quarantined:
        print(
            f"quarantine\t{item['event_id']}\t{item['type']}\t{item['reason']}\t"
            f"source={item['source']}"
        )


def cmd_dlq(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_dlq(config, args))


# --- status --------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    listen = config.admin.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "") else listen.host
    host = "[::1]" if host == "::" else (f"[{host}]" if ":" in host else host)
    request = urllib.request.Request(f"http://{host}:{listen.port}/status")
    if config.admin.token is not None:
        request.add_header("Authorization", f"Bearer {config.admin.token.get()}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            status = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(
            f"openmail-bridge: no bridge answers at {host}:{listen.port} ({exc}); is it running?",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(_format_status(status))
    return EXIT_OK


def _format_status(status: dict[str, object]) -> str:
    lines = [f"state: {status.get('state')}"]
    parts = status.get("parts")
    if isinstance(parts, dict):
        lines += [f"  {k}: {v}" for k, v in parts.items()]
    ws = status.get("websocket")
    if isinstance(ws, dict):
        reason = f" ({ws['reason']})" if ws.get("reason") else ""
        lines.append(f"websocket: {ws.get('state')}{reason}")
    lines.append(f"cursor: {status.get('cursor')}")
    lines.append(f"possible gaps: {status.get('possible_gaps')}")
    spool = status.get("spool")
    if isinstance(spool, dict):
        lines.append(f"spool: {spool.get('bytes')} of {spool.get('max_bytes')} bytes")
    sinks = status.get("sinks")
    if isinstance(sinks, dict):
        lines.append("sinks:")
        for name, info in sinks.items():
            if isinstance(info, dict):
                extra = "" if info.get("configured") else " (removed from config)"
                error = f", last error: {info['last_error']}" if info.get("last_error") else ""
                lines.append(
                    f"  {name}: pending {info.get('pending')}, dead {info.get('dead')}"
                    f"{extra}{error}"
                )
    return "\n".join(lines)


# --- simulator and demo --------------------------------------------------------------------------


def cmd_simulator(args: argparse.Namespace) -> int:
    from bridge.simulator import serve

    logs.configure("info", "auto")
    if bool(args.webhook_url) != bool(args.webhook_secret):
        print("openmail-bridge: --webhook-url and --webhook-secret go together", file=sys.stderr)
        return EXIT_CONFIG

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            stop=stop,
        )

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"openmail-bridge: simulator cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo

    return asyncio.run(run_demo(keep_running=args.keep_running))


# --- parser --------------------------------------------------------------------------------------


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
                config = load_config(path)
            except ConfigError as exc:
                _print_config_error(exc, path)
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
