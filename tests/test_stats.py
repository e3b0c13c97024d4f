"""What an operator follows at ``info``: the ``stats`` line on its (stepped) timer, the oldest
pending age in ``/metrics`` and ``/status``, the last reload's result, and the accounting behind
``dlq.retried`` / ``dlq.purged``."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from bridge.config import Config
from bridge.dispatcher import DeadSnapshot, dlq_changes
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.stats import StatsReporter, difference, read_totals
from bridge.supervisor import Supervisor
from tests.conftest import (
    events_named,
    free_port,
    make_config,
    read_lines,
    signed,
    wait_until,
)

ROUTES = [{"name": "support", "match": {"inbox_ids": ["inb_a"]}, "sinks": ["audit"]}]


class SteppedSleep:
    """An injected sleep that ends only when the test steps it."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._sleepers: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        done = asyncio.get_running_loop().create_future()
        self._sleepers.put_nowait(done)
        await done

    async def _next(self) -> asyncio.Future[None]:
        # A sleep cancelled meanwhile (the timer restarted) is skipped.
        while (sleeper := await self._sleepers.get()).done():
            pass
        return sleeper

    async def step(self) -> None:
        """End the current sleep; return once the sleeper sleeps again, its round done."""
        (await self._next()).set_result(None)
        self._sleepers.put_nowait(await self._next())


def body(event_id: str, inbox_id: str = "inb_a") -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": inbox_id,
            "message": {"id": f"msg_{event_id}", "subject": "hi"},
        }
    ).encode()


async def post(sv: Supervisor, event_id: str, inbox_id: str = "inb_a") -> None:
    assert sv.webhook is not None
    data = body(event_id, inbox_id)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{sv.webhook.port}/webhooks", data=data, headers=signed(data)
        ) as response,
    ):
        assert response.status == 200


@pytest.fixture
def sleep() -> SteppedSleep:
    return SteppedSleep()


@pytest.fixture
async def started(tmp_path: Path, sleep: SteppedSleep) -> AsyncIterator[Supervisor]:
    sv = Supervisor(make_config(tmp_path, routes=ROUTES), sleep=sleep)
    await sv.start()
    try:
        yield sv
    finally:
        await sv.stop()


def stats_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(e) for e in events_named(logs, "stats")]


async def deliver_one_and_stop(
    config: Config, sleep: SteppedSleep, tmp_path: Path
) -> list[dict[str, Any]]:
    """Start a bridge, deliver one event to the file sink, stop it (timer never stepped): the
    logs from the event to the end of the stop."""
    sv = Supervisor(config, sleep=sleep)
    await sv.start()
    with structlog.testing.capture_logs() as logs:
        try:
            await post(sv, "evt_1")
            await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 1)
        finally:
            await sv.stop()
    return [dict(e) for e in logs]


# --- the stats line ------------------------------------------------------------------------------


async def test_stats_line_sums_up_the_interval_and_is_silent_when_idle(
    started: Supervisor, sleep: SteppedSleep
) -> None:
    with structlog.testing.capture_logs() as logs:
        await post(started, "evt_1")
        await post(started, "evt_1")  # OpenMail's retry: a duplicate
        await post(started, "evt_2", inbox_id="inb_nowhere")  # accepted, routed nowhere
        await wait_until(lambda: started.dispatcher.workers["audit"].state.delivered == 1)
        assert stats_lines(logs) == []  # nothing before the timer fires
        await sleep.step()
        await sleep.step()  # an interval in which nothing happened
    [line] = stats_lines(logs)
    assert line["log_level"] == "info"
    assert line["sources"] == {"webhook": {"accepted": 2, "duplicate": 1, "unrouted": 1}}
    assert line["sinks"] == {"audit": {"delivered": 1, "retrying": 0, "dead": 0}}
    assert line["interval"] > 0
    assert sleep.delays[:3] == [60.0, 60.0, 60.0]  # log.stats_interval's default
    # The events themselves are debug lines: at info an operator sees only the stats line.
    per_event = {"event.accepted", "event.duplicate", "delivery.sent"}
    assert {e["log_level"] for e in logs if e["event"] in per_event} == {"debug"}


async def test_stop_writes_what_happened_since_the_last_line(
    tmp_path: Path, sleep: SteppedSleep
) -> None:
    logs = await deliver_one_and_stop(make_config(tmp_path, routes=ROUTES), sleep, tmp_path)
    [line] = stats_lines(logs)
    assert line["sinks"] == {"audit": {"delivered": 1, "retrying": 0, "dead": 0}}
    names = [e["event"] for e in logs]
    assert names.index("bridge.stopping") < names.index("stats") < names.index("bridge.stopped")


async def test_stats_interval_zero_writes_no_line(tmp_path: Path, sleep: SteppedSleep) -> None:
    config = make_config(tmp_path, routes=ROUTES, log={"stats_interval": "0s"})
    logs = await deliver_one_and_stop(config, sleep, tmp_path)
    assert stats_lines(logs) == []
    assert sleep.delays == []


async def test_a_reload_applies_a_new_stats_interval(tmp_path: Path, sleep: SteppedSleep) -> None:
    configs = [make_config(tmp_path, routes=ROUTES, log={"stats_interval": "2m"})]
    sv = Supervisor(make_config(tmp_path, routes=ROUTES), sleep=sleep, reload_config=configs.pop)
    await sv.start()
    try:
        await wait_until(lambda: sleep.delays == [60.0])
        with structlog.testing.capture_logs() as logs:
            await post(sv, "evt_1")
            await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) == 1)
            assert await sv.reload()
            await sleep.step()
        # The line after the reload still counts what happened before it.
        [line] = stats_lines(logs)
        assert line["sources"]["webhook"]["accepted"] == 1
        assert sleep.delays[-1] == 120.0
    finally:
        await sv.stop()


async def test_reporter_reads_the_counters_the_hot_path_keeps() -> None:
    metrics, sleep = Metrics(), SteppedSleep()
    reporter = StatsReporter(
        metrics, sleep=sleep, clock=iter([100.0, 160.0, 220.0, 280.0]).__next__
    )
    reporter.start(60.0)
    with structlog.testing.capture_logs() as logs:
        metrics.events_received.labels("websocket").inc(5)
        metrics.events_unrouted.labels("websocket").inc(2)
        metrics.deliveries.labels("agent", "delivered").inc(3)
        metrics.deliveries.labels("agent", "retry").inc(4)
        metrics.deliveries.labels("agent", "dead").inc()
        await sleep.step()
        await sleep.step()
    await reporter.stop()
    [line] = stats_lines(logs)
    assert line["interval"] == 60.0
    assert line["sources"] == {"websocket": {"accepted": 5, "duplicate": 0, "unrouted": 2}}
    assert line["sinks"] == {"agent": {"delivered": 3, "retrying": 4, "dead": 1}}


def test_difference_reports_only_what_moved() -> None:
    metrics = Metrics()
    metrics.events_received.labels("webhook").inc(2)
    metrics.deliveries.labels("audit", "delivered").inc(2)
    before = read_totals(metrics)
    assert difference(before, read_totals(metrics)) == {}
    metrics.deliveries.labels("audit", "delivered").inc()
    assert difference(before, read_totals(metrics)) == {
        "sources": {},
        "sinks": {"audit": {"delivered": 1, "retrying": 0, "dead": 0}},
    }


# --- oldest pending age, uptime, last reload ----------------------------------------------------


async def test_oldest_pending_age_in_metrics_and_status(tmp_path: Path) -> None:
    down = {"type": "http", "url": f"http://127.0.0.1:{free_port()}/hook", "secret": "s" * 16}
    down["retry"] = {"initial": "1s", "max": "1s"}  # connection refused, retried
    routes = [{"name": "all", "sinks": ["audit", "agent"]}]
    sv = Supervisor(make_config(tmp_path, routes=routes, sinks={"agent": down}))
    await sv.start()
    try:
        await post(sv, "evt_1")
        # Counted once its row is gone from the store, not when the line is in the file.
        await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 1)

        async def sinks() -> Any:
            return (await sv.status())["sinks"]

        async def agent_waited() -> bool:
            return bool((await sinks())["agent"]["oldest_pending_age"] >= 0.05)

        await wait_until(agent_waited)
        status = await sv.status()
        assert status["sinks"]["agent"]["pending"] == 1
        assert status["sinks"]["audit"]["oldest_pending_age"] == 0.0
        assert status["sinks"]["audit"]["delivered"] == 1
        assert 0 < status["uptime"] < 60
        text = (await sv.metrics_text()).decode()
        [age] = re.findall(
            r'^openmail_bridge_oldest_pending_age_seconds\{sink="agent"\} (\S+)$', text, re.M
        )
        assert float(age) >= 0.05
        assert 'openmail_bridge_oldest_pending_age_seconds{sink="audit"} 0.0' in text
    finally:
        await sv.stop()


async def test_status_says_how_the_last_reload_went(tmp_path: Path) -> None:
    def rejected() -> Config:
        raise ConfigError(["sinks.agent.url: not an http(s) URL"])

    sv = Supervisor(make_config(tmp_path, routes=ROUTES), reload_config=rejected)
    await sv.start()
    try:
        assert await sv.reload() is False
        last = (await sv.status())["config"]["last_reload"]
        assert (last["result"], last["ok"]) == ("rejected", False)
        assert last["errors"] == ["sinks.agent.url: not an http(s) URL"]
    finally:
        await sv.stop()


# --- what the daemon says about another process's dlq retry / purge -----------------------------


class FakeWorker:
    """Only its identity matters to the accounting."""


def snapshot(
    recorded: dict[str, tuple[Any, int]], counts: dict[str, tuple[int, int]]
) -> DeadSnapshot:
    return DeadSnapshot(recorded, counts)


def test_dead_rows_gone_are_split_into_retried_and_purged() -> None:
    w = FakeWorker()
    before = snapshot({"agent": (w, 2)}, {"agent": (5, 4)})
    # Meanwhile the worker dead-lettered one more, then another process retried 2, purged 1.
    after = snapshot({"agent": (w, 3)}, {"agent": (6, 2)})
    assert dlq_changes(before, after, {"agent": 2}) == {"agent": (2, 1)}
    # Only the worker's own dead-letters: nothing to report.
    after = snapshot({"agent": (w, 3)}, {"agent": (4, 5)})
    assert dlq_changes(before, after, {}) == {}


def test_a_replaced_worker_counts_its_own_dead_letters_from_zero() -> None:
    old, new = FakeWorker(), FakeWorker()
    before = snapshot({"agent": (old, 7)}, {"agent": (0, 7)})
    after = snapshot({"agent": (new, 1)}, {"agent": (0, 5)})  # the new worker added 1
    assert dlq_changes(before, after, {}) == {"agent": (0, 3)}


def test_a_sink_without_worker_is_retried_when_its_pending_rows_grow() -> None:
    before = snapshot({}, {"gone": (0, 4)})
    after = snapshot({}, {"gone": (3, 0)})
    assert dlq_changes(before, after, {}) == {"gone": (3, 1)}
    assert dlq_changes(before, snapshot({}, {}), {}) == {"gone": (0, 4)}  # purged, sink and all
