"""The WebSocket's events on their way from the socket into the spool.

Two rules live here. **The in-flight bound**: at most ``limit`` events are read from the socket and
not yet committed; the reader stops reading (TCP pushes back on the server) until commits make
room, so a reconnect after a failed commit finds every one of them in OpenMail's replay (at most
``REPLAY_LIMIT`` events after the cursor). **No idle writer**: events go to the spool at the end
of the loop's turn that read them, or as soon as half the bound has gathered, whether or not the
batch before has committed. The spool commits batches in the order they were handed over and
writes the accepts queued while a commit runs as one batch in the next transaction, so its writer
goes from one commit to the next without waiting for this side.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence

import structlog

from bridge.errors import SpoolFullError, StoreError
from bridge.events import Event
from bridge.sources import AcceptResults, Spool
from bridge.sources.ws_session import Disconnect, Health

log = structlog.get_logger("bridge.sources.websocket")


class Intake:
    """Hands one connection's events to ``spool``, at most ``limit`` of them uncommitted.

    ``on_refused`` is called once, with why, when the spool first refuses an event (full, or
    the write failed): the connection should close. The spool never moves the cursor past a
    refused event, so the reconnect replays it and whatever followed; events read after the
    refusal are not handed over at all.
    """

    def __init__(
        self,
        spool: Spool,
        limit: int,
        health: Health,
        on_refused: Callable[[Disconnect], None],
    ) -> None:
        self._spool = spool
        self._limit = limit
        self._batch = max(1, limit // 2)
        self._health = health
        self._on_refused = on_refused
        self._loop = asyncio.get_running_loop()
        self._read: list[Event] = []  # read in this turn of the loop, not handed over yet
        self._in_flight = 0  # read and not yet committed (or refused)
        self._flush_due = False
        self._changed = asyncio.Event()  # set whenever _in_flight goes down
        self.refusal: Disconnect | None = None
        self.refused_id: str | None = None
        """The event the spool refused first: it and the events read after it were not stored."""

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def put(self, event: Event) -> bool:
        """Hand ``event`` over, once fewer than ``limit`` events are in flight; False once the
        spool has refused one (``event`` is then not handed over: read no more)."""
        while self._in_flight >= self._limit and self.refusal is None:
            self._changed.clear()
            await self._changed.wait()
        if self.refusal is not None:
            return False
        self._in_flight += 1
        self._read.append(event)
        if len(self._read) >= self._batch:
            self._flush()  # the next batch starts: one can commit while the other fills
        elif not self._flush_due:
            self._flush_due = True
            self._loop.call_soon(self._flush_at_turn_end)
        return True

    async def drain(self) -> None:
        """Wait until every event handed over is committed or refused."""
        while self._in_flight:
            self._changed.clear()
            await self._changed.wait()

    def _flush(self) -> None:
        batch, self._read = self._read, []
        if not batch:
            return
        if self.refusal is not None:  # not handed over: the reconnect replays them
            self._settled(len(batch))
            return
        try:
            committed = self._spool.accept(batch)
        except Exception as exc:  # closed under us, or a bug: nothing was written, say so
            self._committed(batch, [exc] * len(batch))
            return
        committed.add_done_callback(functools.partial(self._on_commit, batch))

    def _flush_at_turn_end(self) -> None:
        self._flush_due = False
        self._flush()

    def _on_commit(self, batch: list[Event], done: asyncio.Future[AcceptResults]) -> None:
        results: Sequence[object]
        if done.cancelled():
            results = [StoreError("the commit was cancelled; nothing was stored")] * len(batch)
        elif (exc := done.exception()) is not None:  # the write failed: nothing was stored
            results = [exc] * len(batch)
        else:
            results = done.result()
        self._committed(batch, results)

    def _committed(self, batch: list[Event], results: Sequence[object]) -> None:
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None:
            self._health.last_event_at = time.time()
        elif self.refusal is None:
            self._refuse(failure, batch[list(results).index(failure)])
        self._settled(len(batch))

    def _refuse(self, failure: BaseException, event: Event) -> None:
        room_needed = len(event.raw) if isinstance(failure, SpoolFullError) else 0
        self.refused_id = event.event_id
        if not isinstance(failure, SpoolFullError | StoreError):
            log.error("ws.accept_failed", error=str(failure), event_id=event.event_id)
            self.refusal = Disconnect.accept_failed(failure)
        else:
            log.warning(
                "ws.pushback",
                error=str(failure),
                hint="closing the WebSocket until the spool can take events",
            )
            self.refusal = Disconnect.pushed_back(failure, room_needed)
        self._changed.set()  # a reader waiting for room stops waiting
        self._on_refused(self.refusal)

    def _settled(self, count: int) -> None:
        self._in_flight -= count
        self._changed.set()
