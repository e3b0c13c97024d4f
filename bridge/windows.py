"""When a sink's row may go, and which rows at the head of a lane go together.

The store decided both times at accept (:mod:`bridge.store.pacing`): ``not_before``, a rate
limit's hold, and ``window_closes``, the thread's debounce window. This module reads them; times
in, rows out, no I/O. A row waiting for its time holds back the rows behind it in its lane, so a
held or gathered event is never overtaken by a later one of its thread.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.store import Delivery

WindowKey = tuple[str, str | None, float]
"""A debounce window: its thread (else inbox) and when it closes, which its rows share."""


def may_go(delivery: Delivery, now: float, *, flushing: bool = False) -> bool:
    """Whether ``delivery`` may be attempted at ``now``.

    ``flushing`` (the bridge is stopping): its window no longer counts, its hold still does; a
    rate limit's promise is kept across a shutdown, a debounce is only a wait for company.
    """
    until = delivery.not_before if flushing else delivery.due
    return until is None or until <= now


def waits_until(delivery: Delivery, *, flushing: bool = False) -> float | None:
    """The time :func:`may_go` turns true, None when it does not depend on one."""
    return delivery.not_before if flushing else delivery.due


def window_of(delivery: Delivery) -> WindowKey | None:
    """The debounce window ``delivery`` was gathered in; None when it was not.

    Windows are kept per thread, else per inbox, as the store opens them; rows of two threads
    whose windows happen to close at the same moment are still two windows.
    """
    closes = delivery.window_closes
    if closes is None:
        return None
    if delivery.thread_id:
        return ("thread", delivery.thread_id, closes)
    return ("inbox", delivery.inbox_id, closes)


def together(queue: Iterable[Delivery], now: float, *, limit: int, flushing: bool = False) -> int:
    """How many rows from the head of ``queue`` (a lane, in order) go as one delivery: the head
    and the rows of its debounce window right behind it that may go, at most ``limit``.

    Only an unbroken run: a row of another window, or one still held, ends it, so that nothing
    overtakes a row before it in the lane. A head outside any window goes alone.
    """
    count = 0
    window: WindowKey | None = None
    for delivery in queue:
        if count >= limit or not may_go(delivery, now, flushing=flushing):
            break
        key = window_of(delivery)
        if count == 0:
            window = key
        elif window is None or key != window:
            break
        count += 1
    return count
