"""``route-test``: which routes and sinks one event payload would reach, for each route the
match key that decided, and what the routes' guards and rate limits would do to it.

Of the config, only the routes and the sinks' names and types are read: no secret, no other
section. The guard knows the configured ``own_addresses`` only, not those a running bridge
learned; a rate-limited route is shown with its limits not yet spent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_OK
from bridge.cli.operator_config import operator_config
from bridge.config import ROUTES, SinkConfig
from bridge.errors import EventError
from bridge.events import Origin, parse_event
from bridge.gate import Gate, OwnAddresses
from bridge.plan import Plan
from bridge.printable import printable
from bridge.routing import Decision


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
    sinks_by_name: dict[str, SinkConfig[object]] = {
        name: SinkConfig(name=name, type=kind, options=None)
        for name, kind in config.sink_types.items()
    }
    gate = Gate(config.routes, sinks_by_name, OwnAddresses())
    router = gate.router
    routes = [r.name for r in router.matching(event)]
    plan = gate.plan(event)
    sinks = _reached(plan)
    decisions = [(route.name, route.decide(event)) for route in router.routes]
    if args.json:
        # ensure_ascii (json's default, kept on purpose): a control character or a bidi override
        # in the event's fields is written as a \u escape, never as itself.
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
                    **_gate_json(plan),
                },
                ensure_ascii=True,
            )
        )
    else:
        # The event's fields are a stranger's text: escaped, so that they cannot drive the
        # terminal (an OSC 52 clipboard write) or show reversed (U+202E).
        shown = ", ".join(printable(v) for v in (event.type, f"inbox {event.inbox_id}"))
        print(f"event {printable(event.event_id)} ({shown})")
        for name, decision in decisions:
            print(f"  route {printable(name)}: {printable(_decision_text(decision))}")
        for note in plan.notes:
            print(
                f"  guard of route {printable(note.route)}: {note.reason.value}, "
                f"{note.action.value}"
            )
        for lim in plan.limited:
            limits = ", ".join(reason.value for reason, _, _ in lim.keys)
            print(
                f"  limits of route {printable(lim.route)} ({limits}): "
                f"{printable(', '.join(lim.sinks))} while under them, else {lim.over}"
            )
        if sinks:
            print(f"  sinks: {printable(', '.join(sinks))}")
        elif plan.notes:
            print("  sinks: (none: the guards keep it from every sink it was routed to)")
        else:
            print("  sinks: (none: the event would be unrouted)")
    return EXIT_OK


def _gate_json(plan: Plan) -> dict[str, object]:
    """``guards`` and ``limited``, each only when the event meets some: the output of a config
    without guards or limits stays as it was."""
    found: dict[str, object] = {}
    if plan.notes:
        found["guards"] = [note.as_dict() for note in plan.notes]
    if plan.limited:
        found["limited"] = [
            {
                "route": lim.route,
                "sinks": list(lim.sinks),
                "limits": [reason.value for reason, _, _ in lim.keys],
                "over": lim.over,
            }
            for lim in plan.limited
        ]
    return found


def _reached(plan: Plan) -> list[str]:
    """The sinks the event would reach: at once, or through rate limits not yet spent."""
    found = dict.fromkeys(plan.sinks)
    for lim in plan.limited:
        found.update(dict.fromkeys(lim.sinks))
    return list(found)


def _decision_text(decision: Decision) -> str:
    """``match (inbox_ids, from)``: every key held; ``no match (not.verdict)``: the key that
    failed; a route without match keys takes every event."""
    if not decision.keys:
        return "match (no match keys)"
    return f"{'match' if decision.holds else 'no match'} ({', '.join(decision.keys)})"
