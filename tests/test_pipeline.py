"""The accept stage and ingest as a whole: Pipeline.accept against a real SQLite store, both sources
feeding one de-duplicated stream (the fallback scenario), push-back from a full spool, and the
one-process-per-state rule."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from conftest import (
    AGENT_SECRET,
    WEBHOOK_SECRET,
    Receiver,
    bridge_config_dict,
    events_named,
    make_config,
    read_lines,
    running_bridge,
    start_bridge_process,
    stored_ids,
    wait_until,
    webhook_of,
    websocket_of,
    write_config,
)

from bridge.config import RouteConfig, RouteMatch
from bridge.errors import SpoolFullError
from bridge.events import Event, Origin, parse_event
from bridge.gate import Gate, OwnAddresses
from bridge.metrics import Metrics
from bridge.pipeline import UNROUTED_REMEMBERED, Pipeline
from bridge.plan import Action, Note, Plan, Reason
from bridge.protocol import sign
from bridge.simulator import Simulator
from bridge.store import AcceptOutcome, Delivery, Store, StoreLimits

ROUTE_ALL = [{"name": "all", "sinks": ["audit"]}]


# --- helpers -------------------------------------------------------------------------------------


class RecordingDispatcher:
    """Stands in for bridge.dispatcher.Dispatcher: records what the pipeline hands over."""

    def __init__(self) -> None:
        self.submitted: list[Delivery] = []

    def submit(self, deliveries: Iterable[Delivery]) -> None:
        self.submitted.extend(deliveries)


def make_event(
    event_id: str,
    origin: Origin = Origin.WEBHOOK,
    inbox_id: str | None = "inb_a",
    kind: str = "message.received",
) -> Event:
    raw = json.dumps({"event": kind, "event_id": event_id, "inbox_id": inbox_id}).encode()
    return Event(
        event_id=event_id,
        type=kind,
        inbox_id=inbox_id,
        thread_id=f"thr_{event_id}",
        sender="a@example.com",
        recipient="inbox@openmail.sh",
        origin=origin,
        received_at=time.time(),
        raw=raw,
    )


def routes(**by_sink: tuple[str, ...]) -> list[RouteConfig]:
    """One route per sink, matching the given inbox ids (empty: every event)."""
    return [
        RouteConfig(name=sink, sinks=(sink,), match=RouteMatch(inbox_ids=inboxes))
        for sink, inboxes in by_sink.items()
    ]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"openmail_bridge_{name}", labels)
    return 0.0 if value is None else value


def db_rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "state" / "bridge.db")
    try:
        yield s
    finally:
        await s.close()


def pipeline_for(
    store: Store, route_list: list[RouteConfig]
) -> tuple[Pipeline, RecordingDispatcher, Metrics]:
    dispatcher, metrics = RecordingDispatcher(), Metrics()
    gate = Gate(route_list, {}, OwnAddresses())
    return Pipeline(store, gate, dispatcher, metrics), dispatcher, metrics  # type: ignore[arg-type]


# --- Pipeline.accept -----------------------------------------------------------------------------


async def test_accept_persists_and_hands_rows_to_delivery(store: Store) -> None:
    pipeline, dispatcher, metrics = pipeline_for(
        store, routes(agent=(), archive=("inb_a",), other=("inb_b",))
    )
    with structlog.testing.capture_logs() as logs:
        outcome = await pipeline.accept_one(make_event("evt_1"))
    assert outcome is AcceptOutcome.ACCEPTED
    assert sorted(d.sink for d in dispatcher.submitted) == ["agent", "archive"]
    assert {d.event_id for d in dispatcher.submitted} == {"evt_1"}
    assert stored_ids(store.path) == {"evt_1"}
    rows = db_rows(store.path, "SELECT sink FROM deliveries ORDER BY sink")
    assert rows == [("agent",), ("archive",)]
    assert sample(metrics, "events_received_total", source="webhook") == 1
    (accepted,) = [e for e in logs if e["event"] == "event.accepted"]
    assert accepted["event_id"] == "evt_1"
    assert accepted["source"] == "webhook"
    assert accepted["inbox_id"] == "inb_a"
    assert accepted["sinks"] == ["agent", "archive"]


async def test_duplicate_across_sources_is_dropped(store: Store) -> None:
    pipeline, dispatcher, metrics = pipeline_for(store, routes(agent=()))
    assert await pipeline.accept_one(make_event("evt_1", Origin.WEBHOOK)) is AcceptOutcome.ACCEPTED
    with structlog.testing.capture_logs() as logs:
        assert (
            await pipeline.accept_one(make_event("evt_1", Origin.WEBSOCKET))
            is AcceptOutcome.DUPLICATE
        )
        assert (
            await pipeline.accept_one(make_event("evt_1", Origin.WEBHOOK))
            is AcceptOutcome.DUPLICATE
        )
    assert len(dispatcher.submitted) == 1
    assert db_rows(store.path, "SELECT count(*) FROM deliveries") == [(1,)]
    assert sample(metrics, "events_duplicate_total", source="websocket") == 1
    assert sample(metrics, "events_duplicate_total", source="webhook") == 1
    assert sample(metrics, "events_received_total", source="websocket") == 0
    assert [e for e in logs if e["event"] == "event.accepted"] == []
    # A WebSocket duplicate still moves the replay cursor: it was handled.
    assert store.cursor == "evt_1"


async def test_duplicate_is_recognised_after_the_event_was_delivered(store: Store) -> None:
    """The seen record outlives the spooled payload: a late retry is still a duplicate."""
    pipeline, dispatcher, _ = pipeline_for(store, routes(agent=()))
    await pipeline.accept_one(make_event("evt_1"))
    (delivery,) = dispatcher.submitted
    await store.mark_delivered(delivery.id)
    assert db_rows(store.path, "SELECT count(*) FROM events") == [(0,)]
    assert await pipeline.accept_one(make_event("evt_1")) is AcceptOutcome.DUPLICATE


async def test_concurrent_accepts_commit_in_call_order(store: Store) -> None:
    pipeline, dispatcher, _ = pipeline_for(store, routes(agent=()))
    ids = [f"evt_{n:03d}" for n in range(50)]
    outcomes = await asyncio.gather(
        *(pipeline.accept_one(make_event(i, Origin.WEBSOCKET)) for i in ids)
    )
    assert set(outcomes) == {AcceptOutcome.ACCEPTED}
    assert [
        row[0] for row in db_rows(store.path, "SELECT event_id FROM events ORDER BY seq")
    ] == ids
    assert [d.event_id for d in dispatcher.submitted] == ids
    assert store.cursor == ids[-1]
    assert store.commits < len(ids)  # group commit: they shared transactions


async def test_unrouted_event_is_recorded_and_warned_once_per_inbox(store: Store) -> None:
    pipeline, dispatcher, metrics = pipeline_for(store, routes(agent=("inb_routed",)))
    with structlog.testing.capture_logs() as logs:
        for n, inbox in enumerate(["inb_x", "inb_x", "inb_y", None, None]):
            assert (
                await pipeline.accept_one(make_event(f"evt_{n}", inbox_id=inbox))
                is AcceptOutcome.ACCEPTED
            )
    assert dispatcher.submitted == []
    assert sample(metrics, "events_unrouted_total", source="webhook") == 5
    warnings = [e for e in logs if e["event"] == "event.unrouted"]
    assert [w["inbox_id"] for w in warnings] == ["inb_x", "inb_y", None]
    assert all(w["log_level"] == "warning" for w in warnings)
    assert all(w["reason"] == "inbox" for w in warnings)
    assert all(w["hint"].startswith("no route matches this inbox") for w in warnings)
    assert stored_ids(store.path) == {f"evt_{n}" for n in range(5)}  # still de-duplicated later
    assert db_rows(store.path, "SELECT count(*) FROM events") == [(0,)]  # nothing held for no one
    assert store.spool_bytes == 0


async def test_unrouted_hint_names_the_event_type_a_route_excludes(store: Store) -> None:
    only_received = RouteConfig(
        name="agent",
        sinks=("agent",),
        match=RouteMatch(inbox_ids=("inb_a",), event_types=("message.received",)),
    )
    pipeline, dispatcher, metrics = pipeline_for(store, [only_received])
    with structlog.testing.capture_logs() as logs:
        await pipeline.accept_one(make_event("evt_in", kind="message.received"))
        await pipeline.accept_one(make_event("evt_sent_1", kind="message.sent"))
        await pipeline.accept_one(make_event("evt_sent_2", kind="message.sent"))
        await pipeline.accept_one(make_event("evt_other", inbox_id="inb_b"))
    assert [d.event_id for d in dispatcher.submitted] == ["evt_in"]
    assert sample(metrics, "events_unrouted_total", source="webhook") == 3
    unrouted = events_named(logs, "event.unrouted")
    # One line per inbox and reason: the excluded type once, the unknown inbox once.
    assert [(e["event_id"], e["reason"], e["log_level"]) for e in unrouted] == [
        ("evt_sent_1", "event_type", "info"),
        ("evt_other", "inbox", "warning"),
    ]
    assert "exclude this event type" in unrouted[0]["hint"]
    assert "match.event_types" in unrouted[0]["hint"]
    assert "no route matches this inbox" in unrouted[1]["hint"]


async def test_unrouted_lines_come_again_after_the_routes_change(store: Store) -> None:
    pipeline, _, _ = pipeline_for(store, routes(agent=("inb_routed",)))
    with structlog.testing.capture_logs() as logs:
        await pipeline.accept_one(make_event("evt_1"))
        await pipeline.accept_one(make_event("evt_2"))
        pipeline.gate = Gate([], {}, OwnAddresses())  # a reload that leaves no route at all
        await pipeline.accept_one(make_event("evt_3"))
    unrouted = events_named(logs, "event.unrouted")
    assert [(e["event_id"], e["reason"]) for e in unrouted] == [
        ("evt_1", "inbox"),
        ("evt_3", "no_routes"),
    ]
    assert unrouted[1]["hint"].startswith("no routes are configured")


async def test_accepted_and_duplicate_lines_stay_at_debug(store: Store) -> None:
    pipeline, _, _ = pipeline_for(store, routes(agent=()))
    with structlog.testing.capture_logs() as logs:
        await pipeline.accept_one(make_event("evt_1"))
        await pipeline.accept_one(make_event("evt_1"))
    levels = {e["event"]: e["log_level"] for e in logs}
    assert levels == {"event.accepted": "debug", "event.duplicate": "debug"}


async def test_router_swap_applies_to_the_next_event(store: Store) -> None:
    pipeline, dispatcher, _ = pipeline_for(store, routes(old=()))
    await pipeline.accept_one(make_event("evt_1"))
    pipeline.gate = Gate(routes(new=()), {}, OwnAddresses())  # what a reload does
    await pipeline.accept_one(make_event("evt_2"))
    assert [(d.event_id, d.sink) for d in dispatcher.submitted] == [
        ("evt_1", "old"),
        ("evt_2", "new"),
    ]


async def test_spool_full_raises_and_stores_nothing(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "bridge.db", StoreLimits(max_bytes=100))
    try:
        pipeline, dispatcher, metrics = pipeline_for(store, routes(agent=()))
        small = make_event("evt_small")
        assert await pipeline.accept_one(small) is AcceptOutcome.ACCEPTED
        big = make_event("evt_big", Origin.WEBSOCKET)
        with pytest.raises(SpoolFullError):
            await pipeline.accept_one(big)
        assert stored_ids(store.path) == {"evt_small"}
        assert [d.event_id for d in dispatcher.submitted] == ["evt_small"]
        assert sample(metrics, "events_received_total", source="websocket") == 0
        # The refused WebSocket event holds the cursor back, so a replay brings it again.
        assert store.cursor is None
    finally:
        await store.close()


# --- content identity: replays and conflicts -----------------------------------------------------


def signed_body(event_id: str | None, attempt: int = 1, **fields: object) -> bytes:
    """A webhook body as OpenMail signs it for one attempt (None: the field left out)."""
    data: dict[str, object] = {
        "event": "message.received",
        "event_id": event_id,
        "attempt": attempt,
        "delivered_at": f"2026-02-24T10:05:{attempt:02d}.000Z",
        "inbox_id": "inb_a",
        "thread_id": "thr_1",
        "message": {"from": "a@example.com", "to": "inbox@openmail.sh", "subject": "hi"},
    }
    data.update(fields)
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


async def test_replay_with_fresh_event_id_headers_is_accepted_once(store: Store) -> None:
    pipeline, dispatcher, metrics = pipeline_for(store, routes(agent=()))
    raw = signed_body(None)  # a captured request; only the unsigned X-Event-Id is new each time
    outcomes = [
        await pipeline.accept_one(
            parse_event(raw, Origin.WEBHOOK, fallback_event_id=f"evt_fresh_{n}")
        )
        for n in range(4)
    ]
    assert outcomes == [AcceptOutcome.ACCEPTED] + [AcceptOutcome.DUPLICATE] * 3
    assert [d.event_id for d in dispatcher.submitted] == ["evt_fresh_0"]
    assert sample(metrics, "events_duplicate_total", source="webhook") == 3
    assert sample(metrics, "events_conflict_total", source="webhook") == 0


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"message": {"subject": "changed"}}, "content_mismatch"),
        ({"inbox_id": "inb_b"}, "inbox_mismatch"),
    ],
)
async def test_conflict_is_counted_logged_and_never_delivered(
    store: Store, changes: dict[str, object], reason: str
) -> None:
    pipeline, dispatcher, metrics = pipeline_for(store, routes(agent=(), archive=("inb_b",)))
    original = parse_event(signed_body("evt_1"), Origin.WEBHOOK)
    assert await pipeline.accept_one(original) is AcceptOutcome.ACCEPTED
    conflicting = parse_event(signed_body("evt_1", attempt=2, **changes), Origin.WEBSOCKET)

    with structlog.testing.capture_logs() as logs:
        outcome = await pipeline.accept_one(conflicting)

    assert outcome is AcceptOutcome.CONFLICT
    assert [(d.event_id, d.sink) for d in dispatcher.submitted] == [("evt_1", "agent")]
    (logged,) = events_named(logs, "event.conflict")
    assert (logged["log_level"], logged["event_id"], logged["source"], logged["reason"]) == (
        "warning",
        "evt_1",
        "websocket",
        reason,
    )
    assert logged["quarantined"] is True
    assert events_named(logs, "event.accepted") == events_named(logs, "event.duplicate") == []
    assert sample(metrics, "events_conflict_total", source="websocket") == 1
    assert sample(metrics, "events_duplicate_total", source="websocket") == 0
    assert sample(metrics, "events_received_total", source="websocket") == 0
    assert [(q.event_id, q.reason) for q in await store.quarantine_list()] == [("evt_1", reason)]
    assert db_rows(store.path, "SELECT sink FROM deliveries") == [("agent",)]
    assert store.cursor == "evt_1"  # handled, so the replay does not bring it again


# --- the fallback scenario: WebSocket down, webhook meanwhile, replay overlapping -----------------


async def test_fallback_scenario_every_event_exactly_once(sim: Simulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, sim, routes=ROUTE_ALL)
    async with running_bridge(config) as sup:
        assert sup.websocket is not None
        assert sup.webhook is not None
        assert sup.store is not None
        sim.set_webhook(f"http://127.0.0.1:{sup.webhook.port}/webhooks", WEBHOOK_SECRET)
        await wait_until(lambda: websocket_of(sup).receiving)
        before = [await sim.inject() for _ in range(5)]
        await wait_until(lambda: sup.store.cursor == before[-1])

        sim.refuse(3600)  # drop the WebSocket and refuse reconnects for a while
        await sim.disconnect(1001)
        await wait_until(lambda: sup.readiness()[0] == "degraded")
        during = [
            await sim.inject(inbox_id=inbox) for inbox in ["inb_demo_support", "inb_demo_sales"] * 5
        ]

        def webhook_acked() -> set[str]:
            return {
                d.event_id for d in sim.deliveries if d.channel == "webhook" and d.error is None
            }

        await wait_until(lambda: webhook_acked() >= set(during))
        assert stored_ids(config.state.path) == set(before + during)

        sim.refuse(0)  # reconnect: replay from the cursor repeats what came by webhook
        await wait_until(lambda: {d.event_id for d in sim.deliveries if d.replay} == set(during))
        after = [await sim.inject() for _ in range(5)]
        everything = before + during + after
        lines = tmp_path / "events.jsonl"
        await wait_until(lambda: stored_ids(config.state.path) == set(everything))
        await wait_until(lambda: len(read_lines(lines)) >= len(everything))
        received = [line["event_id"] for line in read_lines(lines)]
        assert sorted(received) == sorted(everything)  # each exactly once
        assert sup.metrics.registry.get_sample_value(
            "openmail_bridge_events_duplicate_total", {"source": "websocket"}
        ) == len(during)
        assert sup.store.cursor == after[-1]
        assert sup.readiness()[0] == "ready"


# --- a full spool pushes back and recovers -------------------------------------------------------


async def test_events_refused_before_any_cursor_are_reported_as_a_possible_gap(
    sim: Simulator, tmp_path: Path
) -> None:
    # Room for a connection, not for the first event: it is refused, and with no cursor stored
    # yet, the reconnect has nothing to replay from.
    config = make_config(tmp_path, sim, state={"max_bytes": "100B"}, routes=ROUTE_ALL)
    with structlog.testing.capture_logs() as logs:
        async with running_bridge(config) as sup:
            await wait_until(lambda: websocket_of(sup).receiving)
            refused = await sim.inject()
            await wait_until(lambda: bool(events_named(logs, "ws.refused_without_cursor")))
            (line,) = events_named(logs, "ws.refused_without_cursor")
            assert line["first_refused"] == refused
            assert "no cursor" in line["hint"]
            assert (
                sup.metrics.registry.get_sample_value(
                    "openmail_bridge_possible_gaps_total", {"reason": "refused_without_cursor"}
                )
                == 1
            )
            assert sup.store is not None
            assert sup.store.cursor is None


def spool_looks(store: Store | None, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, each size ``store`` is asked to find room for; the real check answers."""
    assert store is not None
    looks: list[int] = []
    has_room_for = store.has_room_for

    def looking(size: int) -> bool:
        looks.append(size)
        return has_room_for(size)

    monkeypatch.setattr(store, "has_room_for", looking)
    return looks


async def test_full_spool_pushes_back_and_recovers_without_loss(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Receiver(secret=AGENT_SECRET, up=False)  # the sink is down: the spool fills
    await agent.start()
    try:
        config = make_config(
            tmp_path,
            sim,
            state={"max_bytes": "6KiB"},
            sinks={
                "agent": {
                    "type": "http",
                    "url": agent.url,
                    "secret": AGENT_SECRET,
                    "retry": {"initial": "50ms", "max": "200ms"},
                }
            },
            routes=[{"name": "all", "sinks": ["agent"]}],
        )
        with structlog.testing.capture_logs() as logs:
            async with running_bridge(config) as sup, aiohttp.ClientSession() as session:
                assert sup.websocket is not None
                assert sup.webhook is not None
                await wait_until(lambda: websocket_of(sup).receiving)
                sent: list[str] = []
                db = config.state.path
                while not events_named(logs, "ws.pushback"):
                    assert len(sent) < 20, "the spool never filled"
                    sent.append(event_id := await sim.inject())
                    await wait_until(
                        lambda: (
                            event_id in stored_ids(db) or bool(events_named(logs, "ws.pushback"))
                        )
                    )
                assert len(sent) > 1
                assert sent[-1] not in stored_ids(db)
                # Closed, and stays closed while there is no room.
                await wait_until(lambda: websocket_of(sup).state == "paused")
                connects = len(events_named(logs, "sim.ws.connected"))
                sent += [await sim.inject() for _ in range(3)]  # arrive while the bridge is away
                # The thing measured: the paused source looks at the spool again (it re-checks
                # at least once a second) and, finding no room, does not reconnect.
                looks = spool_looks(sup.store, monkeypatch)
                await wait_until(lambda: len(looks) >= 2)
                assert len(events_named(logs, "sim.ws.connected")) == connects
                assert sim.connections == []
                # The store refuses the event it holds back: full, though under its bound.
                readiness, parts = sup.readiness()
                assert (readiness, parts["store"]) == ("unavailable", "full"), sup.readiness()

                # A webhook event just too big for the room left: 503, so OpenMail retries it.
                assert sup.store is not None
                room = config.state.max_bytes - sup.store.spool_bytes
                hook_event = {"event": "message.received", "event_id": "evt_hook", "pad": ""}
                hook_event["pad"] = "x" * max(0, room + 1 - len(json.dumps(hook_event)))
                body = json.dumps(hook_event).encode()
                assert len(body) > room

                async def post_webhook() -> aiohttp.ClientResponse:
                    ts = int(time.time())
                    headers = {
                        "X-Timestamp": str(ts),
                        "X-Signature": sign(WEBHOOK_SECRET, ts, body),
                    }
                    url = f"http://127.0.0.1:{webhook_of(sup).port}/webhooks"
                    async with session.post(url, data=body, headers=headers) as resp:
                        return resp

                refused = await post_webhook()
                assert refused.status == 503
                assert "Retry-After" in refused.headers
                assert "evt_hook" not in stored_ids(db)

                agent.up = True  # room returns as the sink drains the spool
                await wait_until(lambda: set(agent.accepted_ids()) == set(sent), timeout=15)
                await wait_until(lambda: websocket_of(sup).receiving)
                assert (await post_webhook()).status == 200  # OpenMail's retry now lands
                sent.append("evt_hook")
                await wait_until(lambda: len(agent.accepted_ids()) >= len(sent))
                assert sorted(agent.accepted_ids()) == sorted(sent)  # none lost, none twice
                # The cursor held the refused events' place: nothing to report as a gap.
                gaps = sup.metrics.registry.get_sample_value(
                    "openmail_bridge_possible_gaps_total", {"reason": "refused_without_cursor"}
                )
                assert gaps is None
    finally:
        await agent.stop()


# --- one process per state -----------------------------------------------------------------------


async def test_second_instance_on_the_same_state_refuses_to_start(
    tmp_path: Path, bridge_processes: list[Any]
) -> None:
    config = make_config(tmp_path)
    async with running_bridge(config):
        path = write_config(tmp_path / "config.yaml", bridge_config_dict(tmp_path))
        second = start_bridge_process(path)
        bridge_processes.append(second)
        code = await asyncio.to_thread(second.wait, 20.0)
        assert code == 1
        stderr = second.stderr_path.read_text()
        assert f"pid {os.getpid()}" in stderr
        assert str(config.state.path) in stderr


class _BrokenGate(Gate):
    """A gate with a bug one event's content finds (fault injection: the real gate has none
    known)."""

    def plan(self, event: Event) -> Plan:
        if event.event_id == "evt_bad":
            raise RecursionError("maximum recursion depth exceeded")
        return super().plan(event)


async def test_an_event_the_gate_fails_on_goes_nowhere_and_its_batch_is_accepted(
    store: Store,
) -> None:
    dispatcher, metrics = RecordingDispatcher(), Metrics()
    gate = _BrokenGate(routes(agent=()), {}, OwnAddresses())
    pipeline = Pipeline(store, gate, dispatcher, metrics)  # type: ignore[arg-type]
    events = [make_event("evt_1"), make_event("evt_bad"), make_event("evt_2")]
    with structlog.testing.capture_logs() as logs:
        outcomes = await pipeline.accept(events)
    assert outcomes == [AcceptOutcome.ACCEPTED] * 3
    assert sorted(d.event_id for d in dispatcher.submitted) == ["evt_1", "evt_2"]
    (failed,) = [e for e in logs if e["event"] == "event.plan_failed"]
    assert failed["event_id"] == "evt_bad"
    assert failed["log_level"] == "error"
    # Kept with its note, so an operator sees it and can replay it.
    (kept,) = [h for h in await store.history() if h.event_id == "evt_bad"]
    assert kept.notes == (Note("(gate)", Reason.GATE_ERROR, Action.DROPPED),)
    assert sample(metrics, "events_guarded_total", route="(gate)", reason="gate_error") == 1


async def test_the_record_of_warned_inboxes_is_bounded(store: Store) -> None:
    # Inbox ids come from whoever sends events: remembering each one for ever grew without bound.
    pipeline, _, _ = pipeline_for(store, routes(agent=("inb_routed",)))
    events = [make_event(f"evt_{n}", inbox_id=f"inb_{n}") for n in range(UNROUTED_REMEMBERED + 1)]
    with structlog.testing.capture_logs() as logs:
        await pipeline.accept(events)
        await pipeline.accept_one(make_event("evt_again", inbox_id="inb_0"))
    warned = [e["inbox_id"] for e in logs if e["event"] == "event.unrouted"]
    assert len(warned) == UNROUTED_REMEMBERED + 2
    assert warned[-1] == "inb_0"  # the record started over, so it is worth a line again


class _FullDiskLogger:
    """A logger whose warnings fail as a write to stderr on a full disk does."""

    def bind(self, **_: object) -> _FullDiskLogger:
        return self

    def is_enabled_for(self, _level: int) -> bool:
        return False

    def debug(self, *_: object, **__: object) -> None: ...
    def info(self, *_: object, **__: object) -> None: ...
    def exception(self, *_: object, **__: object) -> None: ...

    def warning(self, *_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")


async def test_a_log_line_failing_mid_batch_costs_no_event_its_hand_off(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def event(event_id: str, body: int) -> Event:
        raw = json.dumps({"event": "message.received", "event_id": event_id, "b": body})
        return parse_event(raw.encode(), Origin.WEBHOOK)

    pipeline, dispatcher, metrics = pipeline_for(store, routes(audit=()))
    await pipeline.accept([event("evt_x", 1)])
    dispatcher.submitted.clear()
    monkeypatch.setattr("bridge.pipeline.log", _FullDiskLogger())
    # evt_x again with other content: a conflict, whose warning is the line that fails.
    async with asyncio.timeout(10):  # it used to hang: the answer never came
        outcomes = await pipeline.accept([event("evt_a", 1), event("evt_x", 2), event("evt_c", 1)])
    assert outcomes == [AcceptOutcome.ACCEPTED, AcceptOutcome.CONFLICT, AcceptOutcome.ACCEPTED]
    assert [d.event_id for d in dispatcher.submitted] == ["evt_a", "evt_c"]
    assert sample(metrics, "events_received_total", source="webhook") == 3
