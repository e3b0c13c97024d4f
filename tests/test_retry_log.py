"""How a sink that keeps failing is logged: one ``delivery.retrying`` warning a minute per sink,
the retries between them at debug and counted in the next warning. The worker's clock and sleep
are stepped by hand, so an hour of backoff passes at once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import structlog
from conftest import make_config, wait_until

from bridge.delivery import RETRY_LOG_INTERVAL, SinkWorker
from bridge.errors import RetryableDeliveryError
from bridge.events import Origin, parse_event
from bridge.metrics import Metrics
from bridge.store import Delivery, Store, StoreLimits
from bridge.throttle import Throttle


class Down:
    """A sink that fails until the clock has passed ``until``."""

    def __init__(self, clock: list[float], until: float) -> None:
        self.clock, self.until = clock, until
        self.sent: list[str] = []

    async def start(self) -> None:
        pass

    async def send(self, delivery: Delivery) -> None:
        if self.clock[0] < self.until:
            raise RetryableDeliveryError("HTTP 503 from the agent")
        self.sent.append(delivery.event_id)

    async def reopen(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_a_sink_down_for_minutes_warns_once_a_minute_with_the_count_between(
    tmp_path: Path,
) -> None:
    clock = [time.time()]
    start = clock[0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds
        await asyncio.sleep(0)

    # Waits of at most 20 s (full jitter draws each below that): a minute of failures always
    # holds retries after its warning, whatever the draws. Up to the default 300 s, one wait
    # could jump from the first minute past the outage, leaving a single warning.
    sinks = {"agent": {"type": "stdout", "retry": {"max": "20s"}}}
    config = make_config(tmp_path, sinks=sinks)
    store = await Store.open(tmp_path / "b.db", StoreLimits(min_free=0))
    try:
        body = {"event": "message.received", "event_id": "evt_1", "inbox_id": "inb_1"}
        await store.accept(parse_event(json.dumps(body).encode(), Origin.WEBSOCKET), ["agent"])
        sink = Down(clock, until=start + 3 * RETRY_LOG_INTERVAL)
        worker = SinkWorker(
            config.sinks["agent"], sink, store, Metrics(), sleep=sleep, clock=lambda: clock[0]
        )
        with structlog.testing.capture_logs() as logs:
            await worker.start()
            await wait_until(lambda: sink.sent == ["evt_1"])
            await worker.stop(2)
    finally:
        await store.close()
    retrying = [e for e in logs if e["event"] == "delivery.retrying"]
    warnings = [e for e in retrying if e["log_level"] == "warning"]
    quiet = [e for e in retrying if e["log_level"] == "debug"]
    assert quiet  # a backoff from 1 s retries several times within the first minute
    assert 2 <= len(warnings) <= 4  # three minutes of failures, a warning a minute at most
    assert "retries_since_last_line" not in warnings[0]
    # Each warning counts the quiet retries since the one before (those after the last one wait
    # for a next warning that the recovery made unnecessary).
    last = max(i for i, e in enumerate(retrying) if e["log_level"] == "warning")
    counted = sum(w.get("retries_since_last_line", 0) for w in warnings)
    assert counted == sum(e["log_level"] == "debug" for e in retrying[:last])
    assert [e["attempt"] for e in retrying] == list(range(1, len(retrying) + 1))


def test_a_clock_stepped_back_does_not_silence_the_warnings_for_the_step() -> None:
    # The worker's clock is the wall clock: stepped back an hour, the next warning must not wait
    # an hour and a minute.
    now = [1_800_000_000.0]
    throttle = Throttle(60.0, clock=lambda: now[0])
    assert throttle.admit() == 0
    now[0] += 10
    assert throttle.admit() is None  # within the minute
    now[0] -= 3600
    assert throttle.admit() == 1  # at once, with the one left out
    now[0] += 10
    assert throttle.admit() is None
