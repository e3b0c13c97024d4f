"""``route-test``: which routes and sinks one event payload would reach, and for each route the
match key that decided.

Of the config, only the routes and the sinks' names are read: no secret, no other section.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_OK
from bridge.cli.operator_config import operator_config
from bridge.config import ROUTES
from bridge.errors import EventError
from bridge.events import Origin, parse_event
from bridge.routing import Decision, Router


def cmd_route_test(args: argparse.Namespace) -> int:
    config = operator_config(args, needed=True)
    assert config is not None  # needed=True: one was read, or ConfigError raised
    config.require(ROUTES)
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
    decisions = [(route.name, route.decide(event)) for route in router.routes]
    if args.json:
        print(
            json.dumps(
                {
                    "event_id": event.event_id,
                    "routes": routes,
                    "sinks": sinks,
                    "decisions": [
                        {"route": name, "matched": d.holds, "keys": list(d.keys)}
                        for name, d in decisions
                    ],
                }
            )
        )
    else:
        print(f"event {event.event_id} ({event.type}, inbox {event.inbox_id})")
        for name, decision in decisions:
            print(f"  route {name}: {_decision_text(decision)}")
        print(f"  sinks: {', '.join(sinks) if sinks else '(none: the event would be unrouted)'}")
    return EXIT_OK


def _decision_text(decision: Decision) -> str:
    """``match (inbox_ids, from)``: every key held; ``no match (not.verdict)``: the key that
    failed; a route without match keys takes every event."""
    if not decision.keys:
        return "match (no match keys)"
    return f"{'match' if decision.holds else 'no match'} ({', '.join(decision.keys)})"
