"""A sink worker's rows in memory, by lane: which lanes may go now, which wait for a time (a rate
limit's hold, a debounce window), which have a delivery in flight.

A lane is the unit of order (``ordering: thread``: a thread, else its inbox; ``strict``: one lane
for the sink; ``none``: each row alone, except the rows of one debounce window, which share a
lane so they can go together). One delivery per lane is in flight at a time, and a lane whose
head is not due waits whole: the rows behind it wait too. Pure bookkeeping: the caller passes the
time and owns the timer that wakes it at :meth:`Lanes.next_at`.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque

from bridge.store import Delivery
from bridge.windows import may_go, together, waits_until, window_of

Taken = list[tuple[object, Delivery]]
"""Rows handed out, each with its lane, which stays busy until :meth:`Lanes.release`."""


def lane_of(delivery: Delivery, ordering: str) -> object:
    if ordering == "strict":
        return "*"
    if ordering == "none":
        window = window_of(delivery)
        return delivery.id if window is None else window
    if delivery.thread_id:
        return ("thread", delivery.thread_id)
    return ("inbox", delivery.inbox_id)


class Lanes:
    """Per-lane queues of one sink's rows, and the lanes' states.

    A lane not in flight and not empty is in exactly one place: ``ready`` (its head may go),
    waiting (its head may go at a known time) or, once :meth:`flush` was called, ``flushing``
    (its head waits only for its debounce window, which a stop does not wait for).
    """

    __slots__ = (
        "_busy",
        "_flushing",
        "_heap",
        "_lanes",
        "_order",
        "_ready",
        "_tie",
        "_waiting",
        "known",
    )

    def __init__(self, ordering: str) -> None:
        self._order = ordering
        self._lanes: dict[object, deque[Delivery]] = {}
        self._ready: deque[object] = deque()
        self._waiting: dict[object, float] = {}  # lane -> when its head may go
        # (time, tie-break, lane); entries whose time no longer matches _waiting are stale.
        self._heap: list[tuple[float, int, object]] = []
        self._tie = itertools.count()  # orders entries of one time without comparing lanes
        self._busy: set[object] = set()
        self._flushing: deque[object] | None = None
        self.known: set[int] = set()
        """Ids in memory or in flight."""

    def __len__(self) -> int:
        return len(self.known)

    @property
    def ready(self) -> bool:
        """Whether a lane may go now (as of the last :meth:`promote`)."""
        return bool(self._ready)

    def lane(self, delivery: Delivery) -> object:
        """The lane ``delivery`` goes in."""
        return lane_of(delivery, self._order)

    def has_later(self, lane: object, seq: int) -> bool:
        """Whether ``lane`` has a row after ``seq`` queued."""
        queue = self._lanes.get(lane)
        return bool(queue and queue[-1].seq > seq)

    def add(self, delivery: Delivery, now: float) -> bool:
        """Queue ``delivery`` in its lane, in seq order; False when it is already known."""
        if delivery.id in self.known:
            return False
        self.known.add(delivery.id)
        lane = lane_of(delivery, self._order)
        queue = self._lanes.get(lane)
        if queue is None:
            self._lanes[lane] = deque([delivery])
            if lane not in self._busy:
                self._place(lane, now)
        elif queue and queue[-1].seq > delivery.seq:
            # A redriven row goes before its lane's later rows; it may be due where they wait.
            head = queue[0]
            items = sorted([*queue, delivery], key=lambda d: d.seq)
            queue.clear()
            queue.extend(items)
            if queue[0] is not head and lane not in self._busy and lane in self._waiting:
                del self._waiting[lane]
                self._place(lane, now)
        else:
            queue.append(delivery)
        return True

    def promote(self, now: float) -> None:
        """Make the lanes whose time has come ready."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, lane = heapq.heappop(heap)
            if self._waiting.get(lane) == at:
                del self._waiting[lane]
                self._ready.append(lane)

    def next_at(self) -> float | None:
        """When the first waiting lane may go; None when none waits."""
        heap = self._heap
        while heap and self._waiting.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def flush(self, now: float) -> None:
        """From now on, lanes that wait only for a debounce window go to ``flushing``."""
        self._flushing = deque()
        waiting, self._waiting, self._heap = self._waiting, {}, []
        for lane in waiting:
            self._place(lane, now)

    def take(self, now: float, *, batch: int, windows: bool, flushing: bool = False) -> Taken:
        """The next rows to deliver, in lane order.

        ``windows``: the head's debounce window as far as :func:`~bridge.windows.together` goes
        (a sink that sends a window as one request), at most ``batch`` rows. Else the heads of
        ready lanes and the due rows behind them, up to ``batch`` in all (one for a sink that
        takes events one at a time). ``flushing``: only the lanes :meth:`flush` released.
        """
        source = self._flushing if flushing else self._ready
        taken: Taken = []
        while source and len(taken) < batch:
            lane = source.popleft()
            self._busy.add(lane)
            queue = self._lanes[lane]
            if windows:
                count = together(queue, now, limit=batch, flushing=flushing)
                return [(lane, queue.popleft()) for _ in range(max(count, 1))]
            taken.append((lane, queue.popleft()))
            while queue and len(taken) < batch and may_go(queue[0], now, flushing=flushing):
                taken.append((lane, queue.popleft()))
        return taken

    def release(self, items: Taken, now: float) -> None:
        """The rows of ``items`` are done with (delivered, dead, or left in the store)."""
        lanes: dict[object, None] = {}
        for lane, delivery in items:
            self.known.discard(delivery.id)
            lanes[lane] = None
        for lane in lanes:
            self._busy.discard(lane)
            queue = self._lanes.get(lane)
            if queue:
                self._place(lane, now)
            elif queue is not None:
                del self._lanes[lane]

    def _place(self, lane: object, now: float) -> None:
        """Put a lane that is not in flight where its head says."""
        head = self._lanes[lane][0]
        # Most rows have no time to wait for: the common case skips the timing rules.
        if (head.not_before is None and head.window_closes is None) or may_go(head, now):
            self._ready.append(lane)
            return
        flush = self._flushing
        if flush is not None and may_go(head, now, flushing=True):
            flush.append(lane)
            return
        at = waits_until(head, flushing=flush is not None)
        assert at is not None  # may_go holds for a row with no time to wait for
        self._waiting[lane] = at
        heapq.heappush(self._heap, (at, next(self._tie), lane))
