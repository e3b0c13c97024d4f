"""A delivered outcome's ``attempts`` in ``/api/events`` agrees with the activity feed (``tail``,
``/api/stream``, the event's detail): the attempt that delivered it, counting the failed ones
before it. The spool keeps no count for delivered rows, so once the feed no longer holds the
record the count is unknown (null), never 0, which would say it was never tried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Receiver, running_bridge, signed, wait_until, webhook_of

from bridge.activity import RECENT, Activity, Kind
from bridge.supervisor import Supervisor
from tests.test_cli_operator import _run_cli

from .conftest import TOKEN, base_url, console_config
from .test_api import BEARER, body

FAILURES = 3


@pytest.fixture
async def bridge(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Supervisor]:
    async with running_bridge(console_config(tmp_path, None, receiver, token=TOKEN)) as sv:
        yield sv


async def get(sv: Supervisor, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(base_url(sv) + path, headers=BEARER) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def deliver_after_failures(sv: Supervisor, receiver: Receiver, event_id: str) -> None:
    receiver.statuses = [503] * FAILURES  # then 200
    raw = body(event_id)
    hook = f"http://127.0.0.1:{webhook_of(sv).port}/webhooks"
    async with (
        aiohttp.ClientSession() as http,
        http.post(hook, data=raw, headers=signed(raw)) as response,
    ):
        assert response.status == 200
    await wait_until(lambda: sv.dispatcher.workers["agent"].state.delivered == 1)
    await wait_until(lambda: sv.dispatcher.workers["audit"].state.delivered == 1)


def outcomes(event: dict[str, Any]) -> dict[str, tuple[str, int | None]]:
    return {o["sink"]: (o["outcome"], o["attempts"]) for o in event["outcomes"]}


async def test_a_delivered_outcome_counts_the_attempts_the_feed_reports(
    bridge: Supervisor, receiver: Receiver
) -> None:
    await deliver_after_failures(bridge, receiver, "evt_tried_four_times")
    (listed,) = (await get(bridge, "/api/events"))["events"]
    assert outcomes(listed) == {"agent": ("delivered", FAILURES + 1), "audit": ("delivered", 1)}

    detail = await get(bridge, "/api/events/evt_tried_four_times")
    assert outcomes(detail) == outcomes(listed)
    feed = [(a["kind"], a["attempt"]) for a in detail["activity"] if a["sink"] == "agent"]
    assert feed == [("retrying", n) for n in range(1, FAILURES + 1)] + [("delivered", FAILURES + 1)]


async def test_once_the_feed_forgot_it_the_count_is_unknown_not_zero(
    bridge: Supervisor, receiver: Receiver
) -> None:
    await deliver_after_failures(bridge, receiver, "evt_long_ago")
    for n in range(RECENT):  # other events' records push this one's out of the feed
        bridge.activity.publish(
            Activity(0.0, Kind.ACCEPTED, f"evt_other_{n}", "webhook", None, "message.received")
        )
    (listed,) = (await get(bridge, "/api/events"))["events"]
    assert outcomes(listed) == {"agent": ("delivered", None), "audit": ("delivered", None)}


async def test_only_the_newest_copy_of_a_replayed_event_takes_the_feeds_count(
    bridge: Supervisor, receiver: Receiver, tmp_path: Path
) -> None:
    # The feed's records name an event, not which copy of it: the count of the replay's delivery
    # must not be shown for the copy delivered before it.
    await deliver_after_failures(bridge, receiver, "evt_replayed")
    state = str(bridge.config.state.path)
    replayed = await _run_cli(
        tmp_path, "events", "replay", "evt_replayed", "--sink", "agent", "--state", state
    )
    assert replayed.returncode == 0, replayed.stderr
    await wait_until(lambda: bridge.dispatcher.workers["agent"].state.delivered == 2)
    newest, older = (await get(bridge, "/api/events"))["events"]
    assert newest["event_id"] == older["event_id"] == "evt_replayed"
    assert outcomes(newest)["agent"] == ("delivered", 1)
    assert outcomes(older) == {"agent": ("delivered", None), "audit": ("delivered", None)}
