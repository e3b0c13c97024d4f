"""``dlq``: list, redrive and purge dead letters; list and purge quarantined events.

Dead letters are deliveries a sink refused or that ran out of retries; quarantined events are
conflicts (a known ``event_id`` with other content or another inbox), never delivered. The store is
opened shared, so these work beside a running bridge, and only if it exists: a mistyped path must
not look like an empty dead-letter store. Of the config, only ``state.path`` and the sinks' names
are read (``--state`` replaces it).

A sink gone from the config keeps its pending rows: the file may be edited and not yet reloaded,
or a reload rejected, with the running bridge still delivering to that sink. Only ``purge --sink
NAME --pending`` deletes them, and retry refuses to redrive rows no worker would take.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_OK, refuse
from bridge.cli.operator_config import STATE_INSTEAD, open_state, operator_config, unknown_sink
from bridge.config import OperatorConfig, load_config
from bridge.config_secrets import config_secrets
from bridge.delivery import sink_credentials
from bridge.errors import ConfigError
from bridge.printable import printable
from bridge.redact import scrub_text
from bridge.sinks import SINK_TYPES
from bridge.store import SinkCounts, Store


def _known_secrets(config: OperatorConfig | None) -> list[str]:
    """The config's secrets, when they can all be read, to mask errors an older version recorded
    unmasked; none otherwise (errors are masked when recorded)."""
    if config is None or config.source is None:
        return []
    try:
        full = load_config(config.source, sink_types=SINK_TYPES)
    except ConfigError:
        return []
    known = config_secrets(full)
    for sink in full.sinks.values():
        known += sink_credentials(sink)
    return known


async def _dlq(args: argparse.Namespace) -> int:
    if args.quarantine and args.action == "retry":
        return refuse(
            "quarantined events are never delivered: inspect them with "
            "'dlq list --quarantine' and remove them with 'dlq purge --quarantine'"
        )
    if args.quarantine and args.sink is not None:
        return refuse("--sink does not apply to quarantined events")
    if args.action == "purge" and args.sink is None and args.event_id is None and not args.all:
        what = "quarantined event" if args.quarantine else "dead letter"
        return refuse(f"purge without --sink or --event-id removes every {what}: add --all")
    if args.all and (args.sink is not None or args.event_id is not None):
        return refuse("--all means every one: give it without --sink or --event-id")
    if args.pending and (args.action != "purge" or args.sink is None or args.event_id):
        return refuse(
            "--pending goes with 'purge --sink NAME' only, for a sink removed from the config"
        )
    config = operator_config(args, needed=args.state is None, instead=STATE_INSTEAD)
    if (store := await open_state(args, config)) is None:
        return EXIT_CONFIG
    try:
        if args.sink is not None:
            configured = set(config.sinks) if config is not None else set()
            counts = await store.sink_counts()
            if args.sink not in configured | set(counts):
                return unknown_sink(args.sink, configured | set(counts))
            if (problem := _removed_sink(args, config, counts)) is not None:
                return problem
        elif config is not None and not args.quarantine:
            for name, sink in (await store.sink_counts()).items():
                if name not in config.sinks and sink.pending:
                    _note_pending(name, sink.pending)
        return await _act(store, args, config)
    finally:
        await store.close()


async def _act(store: Store, args: argparse.Namespace, config: OperatorConfig | None) -> int:
    known = _known_secrets(config)
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
        count = await _retry(store, args, config)
        print(json.dumps({"retried": count}) if args.json else f"{count} redriven")
    elif args.quarantine:
        count = await store.quarantine_purge(event_id=args.event_id)
        print(json.dumps({"purged": count}) if args.json else f"{count} purged")
    elif args.pending:  # checked: a sink removed from the config that was read
        # Its dead letters, then every row left: the pending ones (no worker makes more).
        dead_rows = await store.dlq_purge(sink=args.sink)
        pending_rows = await store.drop_sink(args.sink)
        count = dead_rows + pending_rows
        said = {"purged": count, "dead": dead_rows, "pending": pending_rows}
        text = f"{count} purged ({dead_rows} dead, {pending_rows} pending)"
        print(json.dumps(said) if args.json else text)
    else:
        count = await store.dlq_purge(sink=args.sink, event_id=args.event_id)
        print(json.dumps({"purged": count}) if args.json else f"{count} purged")
    return EXIT_OK


async def _retry(store: Store, args: argparse.Namespace, config: OperatorConfig | None) -> int:
    """Redrive dead letters; with a config and no ``--sink``, only those of the sinks it names:
    a sink gone from it has no worker, and its redriven rows would wait for ever."""
    if args.sink is not None or config is None:
        return await store.dlq_retry(sink=args.sink, event_id=args.event_id)
    counts = await store.sink_counts()
    left = sorted(name for name, c in counts.items() if c.dead and name not in config.sinks)
    if left:
        print(
            f"note: dead letters of sinks no longer in the config are left: {', '.join(left)}",
            file=sys.stderr,
        )
    return sum([await store.dlq_retry(sink=s, event_id=args.event_id) for s in config.sinks])


def _removed_sink(
    args: argparse.Namespace, config: OperatorConfig | None, counts: dict[str, SinkCounts]
) -> int | None:
    """Refuse what makes no sense for ``args.sink`` as the config stands (an exit code), and say
    what a sink removed from it still holds; None: go on."""
    removed = config is not None and args.sink not in config.sinks
    pending = counts[args.sink].pending if args.sink in counts else 0
    if args.pending and not removed:
        where = "is still in the config" if config is not None else "cannot be checked: no config"
        return refuse(
            f"--pending deletes events never delivered to {args.sink!r}, for a sink removed from "
            f"the config (and the running bridge reloaded); {args.sink!r} {where}"
        )
    if removed and args.action == "retry":
        return refuse(
            f"{args.sink!r} is not in the config: no worker would take redriven rows; add it "
            "back (and reload the bridge) first"
        )
    if removed and pending and not args.pending:
        _note_pending(args.sink, pending)
    return None


def _note_pending(sink: str, pending: int) -> None:
    """Say what a sink removed from the config still holds, and what deletes it."""
    print(
        f"note: {sink!r} is not in the config and holds {pending} pending rows, never "
        f"delivered; once no running bridge delivers to it, 'dlq purge --sink {sink} "
        "--pending' deletes them",
        file=sys.stderr,
    )


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
            sink, event_id, kind, error = (
                printable(item[key]) for key in ("sink", "event_id", "type", "error")
            )
            print(f"{sink}\t{event_id}\t{kind}\tattempts={item['attempts']}\t{error}")
    if quarantined is None:
        return
    if dead is None and not quarantined:
        print("no quarantined events")
    elif dead is not None and quarantined:
        print(f"quarantined, never delivered ({len(quarantined)}):")
    for item in quarantined:
        event_id, kind, reason, source = (
            printable(item[key]) for key in ("event_id", "type", "reason", "source")
        )
        print(f"quarantine\t{event_id}\t{kind}\t{reason}\tsource={source}")


def cmd_dlq(args: argparse.Namespace) -> int:
    return asyncio.run(_dlq(args))
