"""Upgrading: a state database written by openmail-bridge 0.1.0 (``tests/fixtures/bridge-v0.1.db``,
schema version 1, made by ``tests/fixtures/make_v1_db.py``) opens, migrates, and delivers all it
held, to a real HTTP receiver and a real file, with a real bridge."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from conftest import (
    Receiver,
    events_named,
    read_lines,
    running_bridge,
)
from fixtures.make_v1_db import CURSOR, DEAD, DEAD_ERROR, DELIVERED, FIXTURE, PENDING, payload
from fixtures.upgrade_config import OldDatabase, delivers_every_row, read_db, upgrade_config
from structlog.testing import capture_logs

from bridge.events import Origin, parse_event
from bridge.store import AcceptOutcome, Store

FIXTURE_SHA256 = "54fcc8e4c64ca3b83286565bdb5ec301c6b35a8cb88710d73e0637b332cfed9b"


def test_the_fixture_is_the_committed_v1_database() -> None:
    # Tests copy it and never open it in place: opening would migrate the one file that proves
    # an upgrade from 0.1.0 works.
    assert hashlib.sha256(FIXTURE.read_bytes()).hexdigest() == FIXTURE_SHA256
    assert FIXTURE.read_bytes()[60:64] == (1).to_bytes(4, "big")  # the header's user_version


async def test_v0_1_database_migrates_and_delivers_everything(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "state" / "bridge.db"
    db.parent.mkdir(mode=0o700)
    shutil.copyfile(FIXTURE, db)
    config_file, config, audit = upgrade_config(tmp_path, db, receiver.url)

    with capture_logs() as logs:
        async with running_bridge(config) as sup:
            everything = await delivers_every_row(
                sup,
                logs,
                OldDatabase(1, CURSOR, PENDING, DEAD, DEAD_ERROR),
                db=db,
                config_file=config_file,
                audit=audit,
                receiver=receiver,
            )
            assert sup.pipeline is not None
            assert sup.store is not None

            # An id seen before the upgrade is still a duplicate. Its seen row has no content
            # identity, and unknown content is never a conflict: other bytes are a duplicate too.
            again = parse_event(payload(DELIVERED, 1), Origin.WEBSOCKET)
            assert await sup.pipeline.accept_one(again) is AcceptOutcome.DUPLICATE
            other = json.loads(payload(DELIVERED, 1))
            other["message"]["subject"] = "not what was seen"
            changed = parse_event(json.dumps(other).encode(), Origin.WEBHOOK)
            assert await sup.pipeline.accept_one(changed) is AcceptOutcome.DUPLICATE
            assert sup.store.cursor == DELIVERED  # the WebSocket duplicate moved it on

            # So is an event that was still held at the upgrade (delivered since).
            held = parse_event(payload(PENDING["agent"][0], 2), Origin.WEBHOOK)
            assert await sup.pipeline.accept_one(held) is AcceptOutcome.DUPLICATE
    assert events_named(logs, "event.conflict") == []

    assert sorted(receiver.accepted_ids()) == everything  # each exactly once
    assert sorted(r["event_id"] for r in read_lines(audit)) == sorted(PENDING["audit"])
    store = await Store.open(db)
    try:
        assert await store.sink_counts() == {}
        assert await store.dlq_list() == []
        assert store.spool_bytes == 0
        assert store.cursor == DELIVERED
    finally:
        await store.close()
    assert read_db(db, "SELECT COUNT(*) FROM events") == [(0,)]
