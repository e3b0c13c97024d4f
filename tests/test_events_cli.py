"""``openmail-bridge events list|show|replay``: the real command in a subprocess, over a real state
database, and a replay a running bridge delivers under the same event id."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import (
    AGENT_SECRET,
    Receiver,
    bridge_config_dict,
    run_cli,
    running_bridge,
    wait_until,
    write_config,
)

from bridge.config import build_config
from bridge.events import Event, Origin
from bridge.protocol import EVENT_ID_HEADER
from bridge.sinks import SINK_TYPES
from bridge.store import Store

NOW = 1_800_000_000.0


def event(event_id: str, n: int) -> Event:
    raw = json.dumps({"event": "message.received", "event_id": event_id, "n": n}).encode()
    return Event(
        event_id=event_id,
        type="message.received",
        inbox_id=f"inbox-{n}",
        thread_id=None,
        sender=None,
        recipient=None,
        origin=Origin.WEBSOCKET,
        received_at=NOW + n,
        raw=raw,
    )


async def delivered_db(db: Path) -> None:
    """evt_0..evt_2 delivered (evt_1 to agent and audit, the others to agent); evt_3 pending."""
    db.parent.mkdir(parents=True, exist_ok=True)
    store = await Store.open(db, clock=lambda: NOW + 100)
    try:
        for n in range(4):
            sinks = ["agent", "audit"] if n == 1 else ["agent"]
            rows = (await store.accept(event(f"evt_{n}", n), sinks)).deliveries
            if n < 3:
                await store.mark_delivered_many([r.id for r in rows])
    finally:
        await store.close()


async def test_list_and_show(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    await delivered_db(db)

    code, out, err = await run_cli("events", "list", "--state", str(db))
    assert code == 0, err
    lines = [line.split("\t") for line in out.splitlines()]
    assert [(f[1], f[3], f[4]) for f in lines] == [
        ("evt_2", "inbox-2", "agent"),
        ("evt_1", "inbox-1", "agent,audit"),
        ("evt_0", "inbox-0", "agent"),
    ]
    assert lines[0][0] == "2027-01-15T08:01:40Z"  # completed, UTC

    code, out, err = await run_cli("events", "list", "--state", str(db), "--json", "--limit", "2")
    assert code == 0, err
    listed = json.loads(out)
    assert [e["event_id"] for e in listed] == ["evt_2", "evt_1"]
    assert listed[1] | {"received_at": 0} == {
        "event_id": "evt_1",
        "type": "message.received",
        "inbox_id": "inbox-1",
        "thread_id": None,
        "source": "websocket",
        "received_at": 0,
        "completed_at": NOW + 100,
        "sinks": ["agent", "audit"],
        "notes": [],
    }

    code, out, err = await run_cli("events", "list", "--state", str(db), "--sink", "audit")
    assert code == 0, err
    assert [line.split("\t")[1] for line in out.splitlines()] == ["evt_1"]

    code, out, err = await run_cli("events", "show", "evt_1", "--state", str(db), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["payload"] == {"event": "message.received", "event_id": "evt_1", "n": 1}
    assert shown["sinks"] == ["agent", "audit"]

    code, out, err = await run_cli("events", "show", "evt_0", "--state", str(db))
    assert code == 0, err
    assert "event_id: evt_0" in out
    assert '"n": 0' in out


async def test_refusals_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "bridge.db"
    await delivered_db(db)

    # A pending event is not history yet; an unknown one never was.
    for event_id in ("evt_3", "evt_nope"):
        code, out, err = await run_cli("events", "show", event_id, "--state", str(db))
        assert (code, out) == (2, ""), err
        assert f"no delivered event {event_id!r}" in err
        code, _, err = await run_cli(
            "events", "replay", event_id, "--sink", "agent", "--state", str(db)
        )
        assert code == 2, err

    code, out, err = await run_cli(
        "events", "replay", "evt_0", "--sink", "agnet", "--state", str(db)
    )
    assert (code, out) == (2, "")
    assert "no sink named 'agnet' (known sinks: agent, audit)" in err
    code, _, err = await run_cli("events", "list", "--sink", "agnet", "--state", str(db))
    assert code == 2
    assert "known sinks: agent, audit" in err

    # A config names the sinks; its secrets are not needed.
    config = tmp_path / "config.yaml"
    config.write_text(
        f"state:\n  path: {db}\nsinks:\n  agent:\n    type: http\n    url: http://127.0.0.1:9/\n"
        "    secret: ${UNSET_SECRET_VARIABLE}\n  spare:\n    type: stdout\n"
    )
    code, _, err = await run_cli("events", "replay", "evt_0", "--sink", "audit", "-c", str(config))
    assert code == 2
    assert "known sinks: agent, spare" in err
    # A listing may name a sink gone from the config: the history still has its events.
    code, out, err = await run_cli("events", "list", "--sink", "audit", "-c", str(config))
    assert code == 0, err
    assert [line.split("\t")[1] for line in out.splitlines()] == ["evt_1"]

    # A missing state path is never created.
    missing = tmp_path / "nowhere" / "bridge.db"
    code, out, err = await run_cli("events", "list", "--state", str(missing))
    assert (code, out) == (2, "")
    assert f"no state database at {missing}" in err
    assert not missing.parent.exists()


async def test_replay_is_delivered_by_a_running_bridge_under_the_same_id(
    tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "state" / "bridge.db"
    data = bridge_config_dict(
        tmp_path,
        state={"path": str(db)},
        sinks={"agent": {"type": "http", "url": receiver.url, "secret": AGENT_SECRET}},
        routes=[{"name": "all", "sinks": ["agent"]}],
    )
    config_file = write_config(tmp_path / "config.yaml", data)
    config = build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env={})
    async with running_bridge(config) as sup:
        assert sup.pipeline is not None
        store = sup.store
        assert store is not None
        await sup.pipeline.accept_one(event("evt_fixme", 1))
        await wait_until(lambda: receiver.accepted_ids() == ["evt_fixme"])
        await wait_until(lambda: store.spool_bytes == 0)

        code, out, err = await run_cli(
            "events", "replay", "evt_fixme", "--sink", "agent", "-c", str(config_file)
        )
        assert (code, out) == (0, "evt_fixme queued for agent\n"), err
        await wait_until(lambda: receiver.accepted_ids() == ["evt_fixme", "evt_fixme"])
        first, again = receiver.accepted
        assert again.body == first.body
        assert again.headers[EVENT_ID_HEADER] == first.headers[EVENT_ID_HEADER] == "evt_fixme"

        async def both_in_history() -> bool:
            return [e.event_id for e in await store.history()] == ["evt_fixme", "evt_fixme"]

        # The replayed row's mark commits behind its delivery (the delivered log), and the store
        # counts the other process's insert in its spool bytes only from its own next commit:
        # a spool of 0 bytes before that mark says nothing.
        await wait_until(both_in_history)
        assert store.spool_bytes == 0
