"""``dlq``: list, redrive and purge dead letters; list and purge quarantined events.

Dead letters are deliveries a sink refused or that ran out of retries; quarantined events are
conflicts (a known ``event_id`` with other content or another inbox), never delivered. The store is
opened shared, so these work beside a running bridge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_OK
from bridge.config import Config
from bridge.delivery import sink_credentials
from bridge.redact import scrub_text
from bridge.store import Store, StoreLimits
from bridge.supervisor import config_secrets


async def _dlq(config: Config, args: argparse.Namespace) -> int:
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
    store = await Store.open(
        config.state.path, StoreLimits.from_config(config.state), exclusive=False
    )
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
