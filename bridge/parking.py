"""Rows a sink worker keeps out of memory until their time comes near: a row whose rate-limit hold
or debounce window is further off than :data:`HORIZON`, and the rows of its lane behind it (a
lane's order holds whatever is parked). A parked row is kept as its id, seq, lane and times, never
its payload, and read back from the store by id once its time is within the horizon; the
worker's window of rows with payloads is left to rows that may go soon.

Pure bookkeeping, like :mod:`bridge.lanes`: the caller passes the time, reads back the rows
:meth:`Parked.claim` names, and owns the timer that wakes it at :meth:`Parked.next_at`.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

from bridge.store import Delivery

HORIZON: Final = 60.0
"""Seconds: a row due further off than this is parked; one due sooner waits in memory, on the
worker's timer, so it goes at its exact time."""


class Spot(NamedTuple):
    """A parked row: what finds it in the store and orders it in its lane, and its times."""

    id: int
    seq: int
    lane: object
    due: float | None  # when it may go (None: at once, only behind a parked row of its lane)
    hold: float | None  # its rate limit's hold, which a stop keeps (a debounce window it does not)


def far(delivery: Delivery, now: float) -> bool:
    """Whether ``delivery`` is due further off than the horizon: parked, not held in memory."""
    due = delivery.due
    return due is not None and due > now + HORIZON


def comes_back(spot: Spot, now: float, *, flushing: bool = False) -> bool:
    """Whether a parked row is read back at ``now``: its time is within the horizon, or
    (``flushing``: the worker is stopping) its hold, if any, is over, so the stop sends it."""
    if flushing:
        return spot.hold is None or spot.hold <= now
    return spot.due is None or spot.due <= now + HORIZON


class Parked:
    """Parked rows by lane, in seq order, and when each lane's head comes near.

    Args:
        limit: rows kept at most; once reached, :attr:`accepting` is false until a tenth of them
            has come back, so the caller stops taking rows that would be parked.
    """

    __slots__ = ("_claimed", "_full", "_heap", "_ids", "_lanes", "_limit", "_tie", "_wakes")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lanes: dict[object, list[Spot]] = {}
        self._ids: set[int] = set()
        self._wakes: dict[object, float] = {}  # lane -> when its head comes near; none if claimed
        # (time, tie-break, lane); entries whose time no longer matches _wakes are stale.
        self._heap: list[tuple[float, int, object]] = []
        self._tie = itertools.count()
        self._claimed: set[object] = set()  # lanes whose head rows are being read back
        self._full = False

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._ids

    @property
    def accepting(self) -> bool:
        """Whether more rows may be parked. Resuming only once a tenth of the bound has come back
        lets the next store read park a useful number of rows rather than one."""
        return not self._full

    def behind(self, lane: object, seq: int) -> bool:
        """Whether a row of ``lane`` with ``seq`` comes after a parked row of its lane, so must
        be parked too."""
        spots = self._lanes.get(lane)
        return spots is not None and spots[0].seq < seq

    def add(self, lane: object, delivery: Delivery) -> None:
        """Park ``delivery`` in ``lane``, in seq order (the caller checked it is not known)."""
        spot = Spot(delivery.id, delivery.seq, lane, delivery.due, delivery.not_before)
        self._ids.add(spot.id)
        if len(self._ids) >= self._limit:
            self._full = True
        spots = self._lanes.get(lane)
        if spots is None:
            self._lanes[lane] = [spot]
            self._place(lane)
        elif spots[-1].seq < spot.seq:
            spots.append(spot)
        else:
            # A redriven row goes before its lane's later rows.
            bisect.insort(spots, spot, key=lambda s: s.seq)
            if spots[0] is spot:
                self._place(lane)

    def next_at(self) -> float | None:
        """When the first unclaimed lane's head comes near (may be past); None when none waits."""
        heap = self._heap
        while heap and self._wakes.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def claim(self, now: float, limit: int, *, flushing: bool = False) -> list[Spot]:
        """Up to ``limit`` rows to read back now (:func:`comes_back`), each lane's from its head
        in order. Their lanes are claimed until :meth:`settle`: no other claim takes them."""
        claimed: list[Spot] = []
        lanes = self._unclaimed() if flushing else self._ripe(now)
        while len(claimed) < limit and (lane := next(lanes, None)) is not None:
            run = 0
            for spot in self._lanes[lane]:
                if len(claimed) >= limit or not comes_back(spot, now, flushing=flushing):
                    break
                claimed.append(spot)
                run += 1
            if run:
                self._claimed.add(lane)
                self._wakes.pop(lane, None)
        return claimed

    def settle(self, claimed: Sequence[Spot], *, read: bool) -> list[Spot]:
        """End the claim of ``claimed``; the rows that leave, in order.

        With ``read`` (the store read succeeded) a lane's claimed rows leave from its head as far
        as they are still in front: a redriven row parked before them meanwhile stays, and they
        with it, to be claimed again. Without, all stay.
        """
        ids = {spot.id for spot in claimed} if read else set()
        left: list[Spot] = []
        for lane in dict.fromkeys(spot.lane for spot in claimed):
            self._claimed.discard(lane)
            spots = self._lanes[lane]
            run = 0
            while run < len(spots) and spots[run].id in ids:
                run += 1
            left += spots[:run]
            del spots[:run]
            if spots:
                self._place(lane)
            else:
                del self._lanes[lane]
        self._ids.difference_update(spot.id for spot in left)
        if self._full and len(self._ids) <= self._limit - self._limit // 10:
            self._full = False
        return left

    def _ripe(self, now: float) -> Iterator[object]:
        """Unclaimed lanes whose head comes near by ``now``, earliest first, each taken off the
        heap only when asked for."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, lane = heapq.heappop(heap)
            if self._wakes.get(lane) == at:
                yield lane

    def _unclaimed(self) -> Iterator[object]:
        return (lane for lane in list(self._lanes) if lane not in self._claimed)

    def _place(self, lane: object) -> None:
        """Set when ``lane``'s head comes near; a claimed lane is placed when its claim ends."""
        if lane in self._claimed:
            return
        due = self._lanes[lane][0].due
        at = -math.inf if due is None else due - HORIZON
        self._wakes[lane] = at
        heapq.heappush(self._heap, (at, next(self._tie), lane))


SKIP_BITS: Final = 1 << 23
"""Bits remembering the lanes of rows left in the store (:class:`Skipped`): 1 MiB whatever their
number. Two lanes sharing a bit only make the rows of one wait for the next rescan with the other's,
never out of order."""


class Skipped:
    """Rows left in the store while the parked rows are at their bound, so that the rows of other
    lanes after them can still be read and go: the lowest seq left (every row left is at or above
    it), and their lanes, whose later rows must stay behind them. The caller reads them again once
    rows can be parked (``Intake.rescan``).
    """

    __slots__ = ("_bits", "_lowest_added", "since")

    def __init__(self) -> None:
        self._bits: bytearray | None = None  # made at the first row left: most workers never do
        self.since: int | None = None
        self._lowest_added: int | None = None  # since mark(): see left_since_mark

    def mark(self) -> None:
        """Start noting rows left from now on (:meth:`left_since_mark`)."""
        self._lowest_added = None

    def left_since_mark(self) -> int | None:
        """The lowest seq left since :meth:`mark`: a rescan under way learns of rows another read
        left meanwhile."""
        return self._lowest_added

    def __bool__(self) -> bool:
        return self.since is not None

    def add(self, lane: object, seq: int) -> None:
        """Leave the row ``seq`` of ``lane`` in the store."""
        if self._bits is None:
            self._bits = bytearray(SKIP_BITS // 8)
        bit = hash(lane) % SKIP_BITS
        self._bits[bit >> 3] |= 1 << (bit & 7)
        self.since = seq if self.since is None else min(self.since, seq)
        low = self._lowest_added
        self._lowest_added = seq if low is None else min(low, seq)

    def holds(self, lane: object) -> bool:
        """Whether a row of ``lane`` (or of a lane sharing its bit) was left in the store."""
        if self._bits is None:
            return False
        bit = hash(lane) % SKIP_BITS
        return bool(self._bits[bit >> 3] & (1 << (bit & 7)))

    def keep_lanes_of(self, other: Skipped) -> None:
        """Count ``other``'s lanes as left too: its rows from a seq on were not read again."""
        if other._bits is None:
            return
        if self._bits is None:
            self._bits = bytearray(other._bits)
            return
        both = int.from_bytes(self._bits, "little") | int.from_bytes(other._bits, "little")
        self._bits = bytearray(both.to_bytes(len(self._bits), "little"))
