"""The retry policy's wait: what ends it early (the stop, the failure's wake) and what does not (a
wake that fails, a wake offered with a server's Retry-After)."""

from __future__ import annotations

import asyncio

import pytest

from bridge.config import RetryConfig
from bridge.errors import RetryableDeliveryError
from bridge.events import Origin
from bridge.retry_policy import RetryPolicy
from bridge.store import Delivery


class Sleeps:
    """A sleep that ends only when the test says so; counts the waits begun."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.end = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.started.append(seconds)
        await self.end.wait()


def policy(sleeps: Sleeps, stopping: asyncio.Event | None = None) -> RetryPolicy:
    config = RetryConfig(initial=10.0, max=10.0, max_age=86400.0, max_attempts=0)
    return RetryPolicy(
        config, clock=lambda: 0.0, sleep=sleeps, stopping=stopping or asyncio.Event()
    )


def a_delivery() -> Delivery:
    return Delivery(
        id=1, seq=1, sink="agent", event_id="evt_1", type="message.received",
        inbox_id="inb_1", thread_id="thr_1", origin=Origin.WEBHOOK, received_at=0.0,
        payload=b"{}", attempts=0, last_error=None,
    )  # fmt: skip


async def test_a_wake_ends_the_wait() -> None:
    sleeps, woken = Sleeps(), asyncio.Event()
    wait = asyncio.create_task(policy(sleeps).sleep(10.0, wake=woken.wait))
    await asyncio.sleep(0)
    assert not wait.done()
    woken.set()
    await asyncio.wait_for(wait, 5)
    assert sleeps.started == [10.0]


async def test_a_wake_that_fails_leaves_the_backoff_in_place() -> None:
    sleeps = Sleeps()

    async def broken() -> None:
        raise RuntimeError("connection object gone")

    wait = asyncio.create_task(policy(sleeps).sleep(10.0, wake=broken))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not wait.done()
    sleeps.end.set()
    await asyncio.wait_for(wait, 5)


async def test_the_stop_ends_a_wait_with_a_wake() -> None:
    sleeps, stopping = Sleeps(), asyncio.Event()
    wait = asyncio.create_task(policy(sleeps, stopping).sleep(10.0, wake=asyncio.Event().wait))
    await asyncio.sleep(0)
    stopping.set()
    await asyncio.wait_for(wait, 5)


@pytest.mark.parametrize("retry_after", [None, 30.0])
async def test_a_failures_wake_is_used_unless_the_server_asked_for_a_wait(
    retry_after: float | None,
) -> None:
    sleeps, woken = Sleeps(), asyncio.Event()
    woken.set()  # already back: a wake used ends the wait at once
    attempts = 0

    async def before_sleep(_: object) -> None:
        pass

    async def run() -> None:
        nonlocal attempts
        async for attempt in policy(sleeps).retrying(a_delivery(), 0, before_sleep):
            with attempt:
                attempts += 1
                if attempts == 1:
                    raise RetryableDeliveryError("down", retry_after=retry_after, wake=woken.wait)

    task = asyncio.create_task(run())
    for _ in range(10):
        await asyncio.sleep(0)
    if retry_after is None:
        await asyncio.wait_for(task, 5)
        assert attempts == 2
    else:
        assert not task.done()  # the Retry-After holds
        assert attempts == 1
        sleeps.end.set()
        await asyncio.wait_for(task, 5)
        assert attempts == 2
        assert sleeps.started[0] >= 30.0
