"""The heap trimmer: freed C-heap memory handed back once enough request bytes came in, once per
burst and after it, on a worker thread; nothing at all where there is no trim."""

from __future__ import annotations

import asyncio
import threading

import pytest
from conftest import wait_until

from bridge.memory import HeapTrimmer, glibc_trim


class Trims:
    """A trim that records the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self) -> int:
        self.threads.append(threading.get_ident())
        return 1


class HeldSleep:
    """A sleep that ends when the test says so."""

    def __init__(self) -> None:
        self.calls: list[float] = []
        self.over = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await self.over.wait()


async def test_a_trim_is_owed_once_enough_bytes_came_in_and_runs_off_the_loop() -> None:
    trims, sleep = Trims(), HeldSleep()
    trimmer = HeapTrimmer(trims, after_bytes=1000, delay=1.5, sleep=sleep)
    trimmer.received(999)
    assert not trimmer.owed
    trimmer.received(1)
    assert trimmer.owed
    await wait_until(lambda: sleep.calls == [1.5])
    assert trims.threads == []  # not before the delay is over
    sleep.over.set()
    await wait_until(lambda: not trimmer.owed)
    assert trimmer.trims == 1
    assert len(trims.threads) == 1
    assert trims.threads[0] != threading.get_ident()
    trimmer.close()


async def test_a_burst_is_trimmed_once_and_the_count_starts_again_after_it() -> None:
    trims, sleep = Trims(), HeldSleep()
    trimmer = HeapTrimmer(trims, after_bytes=100, delay=1.0, sleep=sleep)
    for _ in range(50):
        trimmer.received(100)  # owed after the first; one trim for them all
    await wait_until(lambda: sleep.calls == [1.0])
    sleep.over.set()
    await wait_until(lambda: not trimmer.owed)
    assert (trimmer.trims, len(trims.threads)) == (1, 1)
    trimmer.received(99)  # counted from zero again
    assert not trimmer.owed
    trimmer.received(1)
    assert trimmer.owed
    await wait_until(lambda: trimmer.trims == 2)
    trimmer.close()


async def test_closing_drops_an_owed_trim() -> None:
    trims, sleep = Trims(), HeldSleep()
    trimmer = HeapTrimmer(trims, after_bytes=10, delay=1.0, sleep=sleep)
    trimmer.received(10)
    await wait_until(lambda: sleep.calls == [1.0])
    trimmer.close()
    await wait_until(lambda: not trimmer.owed)
    sleep.over.set()
    trimmer.received(10)  # closed: counts nothing, owes nothing
    assert not trimmer.owed
    assert (trimmer.trims, trims.threads) == (0, [])


def test_without_a_trim_nothing_is_ever_owed() -> None:
    trimmer = HeapTrimmer(None, after_bytes=1)
    trimmer.received(10**9)  # no running loop needed either: nothing is scheduled
    assert not trimmer.owed


def test_glibc_trim_calls_malloc_trim_where_the_c_library_is_glibc() -> None:
    trim = glibc_trim()
    if trim is None:
        pytest.skip("the C library is not glibc: nothing to call, the webhook's trimmer gets None")
    assert trim() in (0, 1)  # malloc_trim: 1 when memory was released, 0 otherwise
