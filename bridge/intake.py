"""Which of a sink's pending rows its worker holds, and how they come in: handed over by the
pipeline as they commit, loaded from the store in seq order, picked up again after ``dlq retry``,
and read back by id when parked rows come near their time.

Memory is bounded twice: at most ``window`` rows with their payloads (:class:`~bridge.lanes.Lanes`,
those in flight included), and at most ``parked`` rows kept without them
(:class:`~bridge.parking.Parked`). A row whose rate-limit hold or debounce window is further off
than :data:`~bridge.parking.HORIZON` is parked, and the later rows of its lane with it, so a storm
held by a rate limit never keeps rows of other lanes that may go now out of the window. Once the
parked rows are at their bound, a row that would be parked is left in the store with the later rows
of its lane (:class:`~bridge.parking.Skipped`), and reading goes on past them: a flood held by a
limit never keeps other senders' mail waiting. Those rows are read again once rows can be parked
(:meth:`Intake.rescan`). Every pending row at or below :attr:`Intake.max_seq` is held, parked, or
left at or above ``skipped.since`` (but for rows ``dlq retry`` moved back, which
:meth:`Intake.resync` takes); the rest wait in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Iterable, Iterator

import structlog

from bridge.errors import StoreError
from bridge.lanes import Lanes, Taken
from bridge.parking import Parked, Skipped, far
from bridge.store import Delivery, Store

RESYNC_PAGE = 1000
"""Rows per store read when a resync looks for redriven rows below those already seen."""


def redriven(delivery: Delivery) -> bool:
    """A row ``dlq retry`` moved back to pending, not attempted since: only that resets attempts
    to 0 and keeps the error, where a row never tried has no error."""
    return delivery.attempts == 0 and delivery.last_error is not None


class Admit(enum.Enum):
    """What offering one row to the intake did."""

    HELD = "held"  # in memory with its payload, in its lane
    PARKED = "parked"  # kept without its payload until its time comes near
    KNOWN = "known"  # already held or parked: nothing changed
    REFUSED = "refused"  # it would be parked, but the parked rows are at their bound
    SKIPPED = "skipped"  # an earlier row of its lane was left in the store: left there too


class Intake:
    """The rows of one sink's worker: held (``lanes``), parked (``parked``), and the store cursor.

    Args:
        window: rows held with their payloads at most; loads read no more than the room left.
        parked: rows parked at most (see :class:`~bridge.parking.Parked`).
        clock: Unix time, as the store's hold and window times are.
    """

    __slots__ = (
        "_again",
        "_clock",
        "_held_redriven",
        "_lock",
        "_log",
        "_name",
        "_reads",
        "_store",
        "_window",
        "lanes",
        "max_seq",
        "overflow",
        "parked",
        "skipped",
    )

    def __init__(
        self,
        store: Store,
        name: str,
        ordering: str,
        *,
        window: int,
        parked: int,
        clock: Callable[[], float],
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        self._store = store
        self._name = name
        self._window = window
        self._clock = clock
        self._log = log
        self.lanes = Lanes(ordering)
        self.parked = Parked(parked)
        self.skipped = Skipped()
        """Rows left in the store, past which reading went on; read again by :meth:`rescan`."""
        self.max_seq = 0
        """The highest seq taken; loads read after it."""
        # True until the first load: before it, any row may still be only in the store, and one
        # handed over then must not move max_seq past them (a sink's start can take a while).
        self.overflow = True
        """Rows after ``max_seq`` may wait in the store."""
        # One set per store read in progress: ids whose outcome was recorded meanwhile. The read
        # may still see them pending; adding them again would deliver them twice.
        self._reads: list[set[int]] = []
        # One store read that adds rows at a time: each reads no more than the room it saw.
        self._lock = asyncio.Lock()
        # Rows a resync found redriven (``dlq retry``) while this worker still held them, say
        # while their debounce window was being dead-lettered row by row: once released they
        # are read back (``again``), or they would stay pending below max_seq, where no load looks.
        self._held_redriven: set[int] = set()
        self._again: set[int] = set()

    @property
    def room(self) -> int:
        return self._window - len(self.lanes)

    def submit(self, deliveries: Iterable[Delivery]) -> None:
        """Take rows the pipeline just committed, unless older ones may still wait in the store
        (they are then all read from there, in order)."""
        now = self._clock()
        for delivery in deliveries:
            # While a load is reading, older rows may still be only in the store: taking this one
            # now would put it before them in its thread and move max_seq past them for good.
            if self.overflow or self._reads or self.room <= 0:
                self.overflow = True  # the row is committed: a load reads it once there is room
            elif self._take(delivery, now) in (Admit.REFUSED, Admit.SKIPPED):
                self.overflow = True  # a load reads it, and leaves it with its lane's rows

    def _take(
        self,
        delivery: Delivery,
        now: float,
        *,
        force: bool = False,
        skipped: Skipped | None = None,
    ) -> Admit:
        """Hold or park ``delivery``; ``force`` parks it past the bound (a redrive). A row of a
        lane ``skipped`` (default: :attr:`skipped`) left in the store is left there too; so, in a
        rescan (``skipped`` given), is one the window has no room for."""
        if delivery.id in self.lanes.known or delivery.id in self.parked:
            return Admit.KNOWN
        if self._store.noted(delivery.id):
            # Delivered, its mark on its way: done with, so no load needs to read it again.
            self.max_seq = max(self.max_seq, delivery.seq)
            return Admit.KNOWN
        left = self.skipped if skipped is None else skipped
        if left and left.holds(lane := self.lanes.lane(delivery)):
            left.add(lane, delivery.seq)
            return Admit.SKIPPED
        timed = delivery.not_before is not None or delivery.window_closes is not None
        distant = timed and far(delivery, now)
        if distant or self.parked:
            lane = self.lanes.lane(delivery)
            # A distant row behind held ones of its lane (a redrive) stays with them, in order.
            if self.parked.behind(lane, delivery.seq) or (
                distant and not self.lanes.has_later(lane, delivery.seq)
            ):
                if not (force or self.parked.accepting):
                    return Admit.REFUSED
                self.parked.add(lane, delivery)
                self.max_seq = max(self.max_seq, delivery.seq)
                return Admit.PARKED
        if skipped is not None and self.room <= 0:
            skipped.add(self.lanes.lane(delivery), delivery.seq)
            return Admit.SKIPPED
        self.lanes.add(delivery, now)
        self.max_seq = max(self.max_seq, delivery.seq)
        return Admit.HELD

    @contextlib.contextmanager
    def _reading(self) -> Iterator[set[int]]:
        settled: set[int] = set()
        self._reads.append(settled)
        try:
            yield settled
        finally:
            self._reads = [s for s in self._reads if s is not settled]

    async def load(self, *, after_seq: int) -> int:
        """Take committed rows after ``after_seq``, as many as the window has room for; the count
        of redriven ones taken."""
        async with self._lock:
            room = self.room
            if room <= 0:
                return 0
            self.overflow = False
            with self._reading() as settled:
                try:
                    rows = await self._store.pending(self._name, after_seq=after_seq, limit=room)
                except StoreError as exc:
                    # The rows stay in the store; the next load reads them.
                    self.overflow = True
                    self._log.warning("delivery.load_failed", error=str(exc))
                    return 0
            if len(rows) >= room:
                self.overflow = True
            return self._take_loaded(rows, settled)

    def _take_loaded(self, rows: list[Delivery], settled: set[int]) -> int:
        now = self._clock()
        taken = 0
        for row in rows:
            if row.id in settled:
                continue
            admit = self._take(row, now)
            if admit is Admit.REFUSED:
                # More rows are held back than the parked bound: this row, and the later rows of
                # its lane, stay in the store until rows can be parked again (rescan). Nothing is
                # lost (the rows are committed) or reordered (its lane waits with it), and the
                # rows of other lanes after it are read and go as they would.
                self.skipped.add(self.lanes.lane(row), row.seq)
                admit = Admit.SKIPPED
            if admit is Admit.SKIPPED:
                self.max_seq = max(self.max_seq, row.seq)  # read: rescan, not load, comes back
            elif admit is not Admit.KNOWN and redriven(row):
                taken += 1
        return taken

    def _parking_full(self) -> bool:
        return not self.parked.accepting

    async def rescan(self) -> None:
        """Read the rows left in the store (:attr:`skipped`) again, in seq order, now that rows
        can be parked: held or parked as a load would, or left again, with the later rows of
        their lane, when the parked rows fill up anew or the window has no room."""
        async with self._lock:
            before = self.skipped
            if not before or not self.parked.accepting or self.room <= 0:
                return
            assert before.since is not None
            before.mark()
            fresh = Skipped()
            after, upto = before.since - 1, self.max_seq
            with self._reading() as settled:
                while after < upto:
                    if self._parking_full():
                        # Full again: what follows would be left anyway. It stays left, its lanes
                        # those left before (a superset: nothing of theirs may go ahead of it).
                        fresh.keep_lanes_of(before)
                        fresh.add(None, after + 1)
                        break
                    try:
                        rows = await self._store.pending(
                            self._name, after_seq=after, limit=RESYNC_PAGE
                        )
                    except StoreError as exc:
                        fresh.keep_lanes_of(before)
                        fresh.add(None, after + 1)
                        self._log.warning("delivery.load_failed", error=str(exc))
                        break
                    now = self._clock()
                    for row in rows:
                        if row.seq > upto:
                            break
                        if row.id in settled:
                            continue
                        if self._take(row, now, skipped=fresh) is Admit.REFUSED:
                            fresh.add(self.lanes.lane(row), row.seq)
                    after = rows[-1].seq if rows else upto
            if (meanwhile := before.left_since_mark()) is not None:
                # A resync left a redriven row behind one of the rows being read again: it is
                # not necessarily in what this pass read, so it stays left, with its lane.
                fresh.keep_lanes_of(before)
                fresh.add(None, meanwhile)
            self.skipped = fresh

    async def resync(self) -> int:
        """Take rows another process changed (``dlq retry``), keeping what is held and parked;
        the count of redriven rows taken.

        A redriven row sits at or below ``max_seq``, where loads never look again, and the window
        or the parked rows may be full: such rows are taken whatever the bounds (a redrive is an
        explicit, bounded act). Rows above ``max_seq`` are loaded as usual.
        """
        taken = 0
        with self._reading() as settled:
            after = 0
            while after < self.max_seq:
                rows = await self._store.pending(self._name, after_seq=after, limit=RESYNC_PAGE)
                now = self._clock()
                for row in rows:
                    if row.seq > self.max_seq:
                        continue
                    if row.id in settled:
                        if redriven(row):
                            self._again.add(row.id)  # released meanwhile: read it back
                        continue
                    admit = self._take(row, now, force=True)
                    if admit is Admit.KNOWN and redriven(row) and row.id in self.lanes.known:
                        self._held_redriven.add(row.id)
                    elif admit in (Admit.HELD, Admit.PARKED) and redriven(row):
                        taken += 1  # one left behind its lane's rows comes with their rescan
                after = rows[-1].seq if rows else self.max_seq
        return taken + await self.load(after_seq=self.max_seq)

    async def unpark(self, now: float, *, flushing: bool = False) -> None:
        """Read back the parked rows whose time has come near (``flushing``: those a stop sends,
        their hold, if any, over), as many as the window has room for. A row gone from the store
        meanwhile (purged, its sink dropped) is skipped."""
        async with self._lock:
            spots = self.parked.claim(now, self.room, flushing=flushing)
            if not spots:
                return
            # Registered as a read: rows handed over meanwhile wait in the store, not in the room
            # these rows are coming back to.
            try:
                with self._reading():
                    rows = await self._store.deliveries([spot.id for spot in spots])
            except BaseException as exc:
                self.parked.settle(spots, read=False)  # claimed again on the next wake-up
                if not isinstance(exc, StoreError):
                    raise
                self._log.warning("delivery.load_failed", error=str(exc))
                return
            found = {row.id: row for row in rows}
            now = self._clock()
            for spot in self.parked.settle(spots, read=True):
                if (row := found.get(spot.id)) is not None:
                    self.lanes.add(row, now)

    async def refill(self) -> None:
        """Bring rows in: redriven rows released since a resync saw them, parked rows near their
        time (they are older, and due), then the store's next rows when some may wait there and
        could be parked."""
        if self._again:
            ids, self._again = sorted(self._again), set()
            try:
                rows = await self._store.deliveries(ids)
            except StoreError as exc:
                self._again.update(ids)  # read on the next refill
                self._log.warning("delivery.load_failed", error=str(exc))
            else:
                now = self._clock()
                for row in rows:
                    if redriven(row):
                        self._take(row, now, force=True)
        await self.unpark(self._clock())
        if self.skipped and self.parked.accepting:
            await self.rescan()
        if self.overflow:
            await self.load(after_seq=self.max_seq)

    def wants_refill(self, now: float, *, idle: bool) -> bool:
        """Whether :meth:`refill` would bring rows in now: parked rows come near, or (``idle``:
        nothing to deliver, so loading cannot delay a delivery) rows wait in the store."""
        if self._again:
            return True
        if self.room <= 0:
            return False
        at = self.parked.next_at()
        if at is not None and at <= now:
            return True
        if self.skipped and self.parked.accepting:
            return True
        return idle and self.overflow

    def next_at(self, *, refilling: bool) -> float | None:
        """When the worker next has something to do: a waiting lane may go, or parked rows come
        near. The latter only counts while they could come in: the window has room and no
        refill is running (its end wakes the worker anyway)."""
        at = self.lanes.next_at()
        if refilling or self.room <= 0:
            return at
        near = self.parked.next_at()
        if near is None:
            return at
        return near if at is None else min(at, near)

    def recorded(self, ids: Iterable[int]) -> None:
        """Rows settled earlier are now marked delivered in the store. A read in flight may have
        begun before that commit, so it may still see them pending (they were in the delivered
        log, not in a lane, when they settled)."""
        if self._reads:
            done = set(ids)
            for settled in self._reads:
                settled |= done

    def settle(self, items: Taken) -> None:
        """The rows of ``items`` are done with (delivered, dead, or left pending in the store)."""
        for _, delivery in items:
            for settled in self._reads:
                settled.add(delivery.id)
            if delivery.id in self._held_redriven:
                self._held_redriven.discard(delivery.id)
                self._again.add(delivery.id)
        self.lanes.release(items, self._clock())
