"""``events``: list, show and replay events already delivered, from the spool's history.

The history keeps the newest ``state.history`` events delivered to every sink they were routed to,
payloads included. ``replay`` queues a new pending delivery of one of them to one sink, under the
same event_id and dedup bypassed: after an agent's bug is fixed, it gets the event again. The store
is opened shared, and only if it exists, as ``dlq`` opens it; a running bridge picks the new row up
as it picks up a ``dlq retry``. Of the config, only ``state.path`` and the sinks' names are read.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json

import orjson

from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, refuse
from bridge.cli.operator_config import (
    STATE_INSTEAD,
    open_state,
    operator_config,
    unknown_sink,
)
from bridge.config import OperatorConfig
from bridge.printable import printable
from bridge.store import HistoryEvent, ReplayOutcome, Store


async def _events(args: argparse.Namespace) -> int:
    config = operator_config(args, needed=args.state is None, instead=STATE_INSTEAD)
    if (store := await open_state(args, config)) is None:
        return EXIT_CONFIG
    try:
        if getattr(args, "sink", None) is not None:
            known = await _known_sinks(store, config, replay=args.action == "replay")
            if args.sink not in known:
                return unknown_sink(args.sink, known)
        if args.action == "list":
            listed = await store.history(sink=args.sink, limit=args.limit)
            _print_list(listed, as_json=args.json)
            return EXIT_OK
        event = await store.history_event(args.event_id)
        if event is None:
            return refuse(f"no delivered event {args.event_id!r} in the history of {store.path}")
        if args.action == "show":
            _print_event(event, as_json=args.json)
            return EXIT_OK
        return _replayed(await store.replay(args.event_id, args.sink), args)
    finally:
        await store.close()


async def _known_sinks(store: Store, config: OperatorConfig | None, *, replay: bool) -> set[str]:
    """The sinks the database names, and the configured ones; for a replay only the configured
    ones when the config was read: a sink it lacks would never deliver."""
    configured = set(config.sinks) if config is not None else set()
    if replay and configured:
        return configured
    return configured | set(await store.sink_counts()) | await store.history_sinks()


def _replayed(outcome: ReplayOutcome, args: argparse.Namespace) -> int:
    if outcome is ReplayOutcome.QUEUED:
        print(f"{args.event_id} queued for {args.sink}")
        return EXIT_OK
    if outcome is ReplayOutcome.ALREADY_HELD:
        return refuse(
            f"{args.event_id} is still held for {args.sink} (pending, or dead: see "
            f"'dlq list --event-id {args.event_id}')",
            EXIT_FAILURE,
        )
    return refuse(f"no delivered event {args.event_id!r} in the history")


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(event: HistoryEvent) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "inbox_id": event.inbox_id,
        "thread_id": event.thread_id,
        "source": event.origin.value,
        "received_at": event.received_at,
        "completed_at": event.completed_at,
        "sinks": list(event.sinks),
        "notes": [note.as_dict() for note in event.notes],
    }


def _notes_text(event: HistoryEvent) -> str:
    """What routes' guards and limits did, as ``route:reason:action`` items."""
    return ",".join(f"{n.route}:{n.reason}:{n.action}" for n in event.notes)


def _print_list(events: list[HistoryEvent], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps([_summary(e) for e in events]))
        return
    if not events:
        print("no delivered events in the history")
    for e in events:
        fields = (e.event_id, e.type, e.inbox_id or "-", ",".join(e.sinks) or "-")
        line = "\t".join([_when(e.completed_at), *map(printable, fields)])
        print(f"{line}\t{printable(_notes_text(e))}" if e.notes else line)


def _print_event(event: HistoryEvent, *, as_json: bool) -> None:
    raw = event.payload or b""
    try:
        payload: object = orjson.loads(raw)
    except orjson.JSONDecodeError:
        payload = raw.decode(errors="replace")
    if as_json:
        print(json.dumps(_summary(event) | {"payload": payload}))
        return
    fields = _summary(event) | {
        "received_at": _when(event.received_at),
        "completed_at": _when(event.completed_at),
        "sinks": ", ".join(event.sinks),
        "notes": _notes_text(event) or None,
    }
    for name, value in fields.items():
        print(f"{name}: {'-' if value is None else printable(value)}")
    print("payload:")  # json.dumps writes every control and non-ASCII character escaped
    print(json.dumps(payload, indent=2) if not isinstance(payload, str) else printable(payload))


def cmd_events(args: argparse.Namespace) -> int:
    return asyncio.run(_events(args))
