"""bridge.backoff: the one delay formula and the reconnect policy, on an injected clock, random
source and sleep: no wall clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from bridge.backoff import Pace, ReconnectPolicy, full_jitter
from bridge.config import ReconnectConfig


def upper(low: float, high: float) -> float:
    """A random source that always draws the top of the range."""
    return high


def lower(low: float, high: float) -> float:
    return low


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """An injected sleep that records what it was asked and returns at once."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


SETTINGS = ReconnectConfig(initial=1.0, max=30.0, reset_after=60.0)


def policy(clock: Clock | None = None, uniform=upper, sleep=None) -> ReconnectPolicy:  # type: ignore[no-untyped-def]
    return ReconnectPolicy(
        SETTINGS, clock=clock or Clock(), uniform=uniform, sleep=sleep or Sleeps()
    )


# --- the formula ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "high"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (50, 30.0), (10_000, 30.0)],
)
def test_full_jitter_window_doubles_up_to_the_cap(attempt: int, high: float) -> None:
    seen: list[tuple[float, float]] = []

    def record(low: float, top: float) -> float:
        seen.append((low, top))
        return top

    assert full_jitter(attempt, 1.0, 30.0, record) == high
    assert seen == [(0.0, high)]  # full jitter: the draw starts at zero


def test_full_jitter_draws_inside_the_window_with_the_real_random_source() -> None:
    rng = random.Random(7)
    delays = [full_jitter(4, 0.5, 60.0, rng.uniform) for _ in range(200)]
    assert all(0.0 <= d <= 4.0 for d in delays)
    assert max(delays) > 2.0  # spread over the window, not bunched at the start
    assert min(delays) < 2.0


def test_full_jitter_without_a_window_is_zero() -> None:
    assert full_jitter(3, 0.0, 30.0, upper) == 0.0
    assert full_jitter(3, 1.0, 0.0, upper) == 0.0


# --- the reconnect policy ------------------------------------------------------------------------


def test_normal_pace_follows_the_curve_then_holds_at_the_cap() -> None:
    p = policy()
    assert [p.next_delay(Pace.NORMAL) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert p.attempt == 7


def test_rejections_wait_near_the_cap_from_the_first_attempt() -> None:
    assert policy(uniform=upper).next_delay(Pace.AT_CAP) == 30.0
    assert policy(uniform=lower).next_delay(Pace.AT_CAP) == pytest.approx(24.0)  # 0.8 x cap


def test_rate_limited_waits_at_least_eight_initial_delays() -> None:
    p = policy(uniform=lower)  # the curve alone would say 0
    assert p.next_delay(Pace.SLOWER) == 8.0
    capped = ReconnectPolicy(ReconnectConfig(initial=10.0, max=30.0), uniform=lower)
    assert capped.next_delay(Pace.SLOWER) == 30.0  # never past the cap


def test_pushback_reconnects_at_once_but_still_counts() -> None:
    p = policy()
    assert p.next_delay(Pace.NOW) == 0.0
    assert p.next_delay(Pace.NORMAL) == 2.0  # the second failure in a row


def test_a_connection_that_stayed_up_resets_the_curve() -> None:
    clock = Clock()
    p = policy(clock)
    for _ in range(4):
        p.next_delay(Pace.NORMAL)
    p.up()
    clock.now += 59.9
    assert p.ended() is False  # not long enough: the curve goes on
    assert p.next_delay(Pace.NORMAL) == 16.0
    p.up()
    clock.now += 60.0
    assert p.ended() is True
    assert p.next_delay(Pace.NORMAL) == 1.0


def test_ended_without_up_does_not_reset() -> None:
    p = policy()
    p.next_delay(Pace.NORMAL)
    assert p.ended() is False
    assert p.next_delay(Pace.NORMAL) == 2.0


def test_new_settings_apply_to_the_next_delay() -> None:
    p = policy()
    p.settings = ReconnectConfig(initial=0.5, max=3.0, reset_after=1.0)
    assert [p.next_delay(Pace.NORMAL) for _ in range(4)] == [0.5, 1.0, 2.0, 3.0]
    assert p.settle_delay() == 0.5  # up to one initial delay


async def test_sleep_uses_the_injected_sleep() -> None:
    sleeps = Sleeps()
    await policy(sleep=sleeps).sleep(12.5, asyncio.Event())
    assert sleeps.asked == [12.5]


async def test_sleep_ends_early_when_woken() -> None:
    forever = asyncio.Event()

    async def never(seconds: float) -> None:
        await forever.wait()

    wake = asyncio.Event()
    p = policy(sleep=never)
    sleeping = asyncio.create_task(p.sleep(3600.0, asyncio.Event(), wake))
    await asyncio.sleep(0)
    assert not sleeping.done()
    wake.set()
    await asyncio.wait_for(sleeping, timeout=5)
    assert not forever.is_set()


async def test_sleep_returns_at_once_when_already_woken() -> None:
    stop = asyncio.Event()
    stop.set()

    async def never(seconds: float) -> None:
        await asyncio.Event().wait()

    await asyncio.wait_for(policy(sleep=never).sleep(3600.0, stop), timeout=5)
