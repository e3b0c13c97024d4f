"""Upgrading from schema version 3: a state database written by openmail-bridge at commit 0eb1bc9
(``tests/fixtures/bridge-v3.db``, made by ``tests/fixtures/make_v3_db.py``) opens, migrates, and
loses nothing: a real bridge delivers every pending row, to a real HTTP receiver and a real file,
the commands list and redrive its dead letters and list its history and quarantine, its seen ids
stay known and its WebSocket cursor stays where it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from conftest import (
    Receiver,
    events_named,
    read_lines,
    run_cli,
    running_bridge,
    wait_until,
)
from fixtures.make_v3_db import (
    CONFLICT,
    CONFLICT_REASON,
    CONFLICT_SUBJECT,
    CURSOR,
    DEAD,
    DEAD_ERROR,
    DELIVERED_HELD,
    EVENT_IDS,
    FIXTURE,
    HISTORY,
    PENDING,
    SINKS,
    payload,
)
from fixtures.upgrade_config import OldDatabase, delivers_every_row, read_db, upgrade_config
from structlog.testing import capture_logs

from bridge.events import Origin, parse_event
from bridge.store import AcceptOutcome, Store
from bridge.store.schema import SCHEMA_VERSION

FIXTURE_SHA256 = "83608979b7799c69be1f7115499504facd8fc72f7c2165c978fdaa61086797d4"


def copy_fixture(tmp_path: Path) -> Path:
    db = tmp_path / "state" / "bridge.db"
    db.parent.mkdir(mode=0o700)
    shutil.copyfile(FIXTURE, db)
    return db


def history_listed(out: str) -> list[tuple[str, list[str]]]:
    """(event id, its sinks sorted) of each event ``events list --json`` printed, in its order.
    Every one of them carries no notes: no guard or limit acted before the upgrade."""
    items = json.loads(out)
    assert [item["notes"] for item in items] == [[]] * len(items)
    return [(item["event_id"], sorted(item["sinks"])) for item in items]


async def assert_no_notes(db: Path) -> None:
    """The history as the store reads it: no event in it carries notes (a NULL from the
    migration reads as none)."""
    store = await Store.open(db, exclusive=False)
    try:
        past = await store.history(limit=100)
    finally:
        await store.close()
    assert past
    assert [event.event_id for event in past if event.notes] == []


def test_the_fixture_is_the_committed_v3_database() -> None:
    # Tests copy it and never open it in place: opening would migrate the one file that proves
    # an upgrade from schema version 3 works.
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == FIXTURE_SHA256
    assert FIXTURE.read_bytes()[60:64] == (3).to_bytes(4, "big")  # the header's user_version


async def test_the_commands_list_a_v3_databases_history_dead_letters_and_quarantine(
    tmp_path: Path,
) -> None:
    db = copy_fixture(tmp_path)
    state = ("--state", str(db))

    code, out, err = await run_cli("events", "list", "--json", *state)
    assert code == 0, err
    assert read_db(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert history_listed(out) == [
        (event_id, sorted(HISTORY[event_id])) for event_id in reversed(HISTORY)
    ]
    await assert_no_notes(db)

    code, out, err = await run_cli("dlq", "list", "--json", *state)
    assert code == 0, err
    assert [(i["sink"], i["event_id"], i["attempts"], i["error"]) for i in json.loads(out)] == [
        ("agent", event_id, 3, DEAD_ERROR) for event_id in DEAD["agent"]
    ]

    code, out, err = await run_cli("dlq", "list", "--quarantine", "--json", *state)
    assert code == 0, err
    assert [(i["event_id"], i["reason"], i["source"]) for i in json.loads(out)] == [
        (CONFLICT, CONFLICT_REASON, "webhook")
    ]


async def test_v3_database_migrates_and_delivers_everything(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = copy_fixture(tmp_path)
    config_file, config, audit = upgrade_config(tmp_path, db, receiver.url)
    everything = sorted(PENDING["agent"] + DEAD["agent"])

    with capture_logs() as logs:
        async with running_bridge(config) as sup:
            # An event already delivered to one of its sinks before the upgrade is not
            # delivered there again.
            assert everything == await delivers_every_row(
                sup,
                logs,
                OldDatabase(3, CURSOR, PENDING, DEAD, DEAD_ERROR),
                db=db,
                config_file=config_file,
                audit=audit,
                receiver=receiver,
            )
            assert sup.pipeline is not None
            assert sup.store is not None
            await wait_until(lambda: read_db(db, "SELECT COUNT(*) FROM events") == [(0,)])

            # The history keeps the events delivered before the upgrade, and those delivered
            # since name every sink they reached, before the upgrade or after it.
            code, out, err = await run_cli("events", "list", "--json", "-c", str(config_file))
            assert code == 0, err
            assert history_listed(out) == [
                (event_id, sorted(HISTORY.get(event_id, SINKS))) for event_id in EVENT_IDS[::-1]
            ]
            # An event delivered to one sink before the upgrade went to its other sink only.
            received = {
                "agent": receiver.accepted_ids(),
                "audit": [line["event_id"] for line in read_lines(audit)],
            }
            assert [e for e, sink in DELIVERED_HELD.items() if e in received[sink]] == []

            # An event delivered before the upgrade is replayed from its history row.
            replayed = list(HISTORY)[-1]
            code, out, err = await run_cli(
                "events", "replay", replayed, "--sink", "audit", "-c", str(config_file)
            )
            assert code == 0, err
            await wait_until(lambda: len(read_lines(audit)) == len(PENDING["audit"]) + 1)

            # Ids seen before the upgrade are still duplicates, whatever transport brings them.
            for event_id in EVENT_IDS:
                again = parse_event(payload(event_id), Origin.WEBHOOK)
                assert await sup.pipeline.accept_one(again) is AcceptOutcome.DUPLICATE, event_id
            assert sup.store.cursor == CURSOR  # webhook duplicates leave it
            again = parse_event(payload(EVENT_IDS[0]), Origin.WEBSOCKET)
            assert await sup.pipeline.accept_one(again) is AcceptOutcome.DUPLICATE
            assert sup.store.cursor == EVENT_IDS[0]  # the WebSocket duplicate moved it on

            # Their content is known: other content under one of them is a conflict, kept beside
            # the one quarantined before the upgrade.
            changed_id = PENDING["agent"][0]
            changed = parse_event(payload(changed_id, subject=CONFLICT_SUBJECT), Origin.WEBHOOK)
            assert await sup.pipeline.accept_one(changed) is AcceptOutcome.CONFLICT
            code, out, err = await run_cli(
                "dlq", "list", "--quarantine", "--json", "-c", str(config_file)
            )
            assert code == 0, err
            assert [(i["event_id"], i["reason"]) for i in json.loads(out)] == [
                (CONFLICT, CONFLICT_REASON),
                (changed_id, CONFLICT_REASON),
            ]
    assert [entry["event_id"] for entry in events_named(logs, "event.conflict")] == [changed_id]

    assert sorted(receiver.accepted_ids()) == everything  # each exactly once
    assert [r["event_id"] for r in read_lines(audit)][-1] == replayed
    assert sorted(r["event_id"] for r in read_lines(audit)) == sorted([*PENDING["audit"], replayed])
    await assert_no_notes(db)
    store = await Store.open(db)
    try:
        assert await store.sink_counts() == {}
        assert await store.dlq_list() == []
        assert len(await store.quarantine_list()) == 2
        # Quarantined payloads are all the spool still holds.
        assert [(store.spool_bytes,)] == read_db(db, "SELECT SUM(size) FROM quarantine")
        assert store.cursor == EVENT_IDS[0]
    finally:
        await store.close()
    assert read_db(db, "SELECT COUNT(*) FROM events") == [(0,)]
    assert read_db(db, "SELECT COUNT(*) FROM delivered") == [(0,)]
