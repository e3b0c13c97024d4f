"""The WebSocket intake: at most ``max_in_flight`` events read and not yet committed, the next
batch handed over while one commits, and the first refusal ending the connection's intake.

The spool here answers each batch only when the test commits it, so every step is observable;
the WebSocket tests drive the same intake end to end against the simulator and a real store.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from bridge.backoff import Pace
from bridge.errors import SpoolFullError, StoreUnavailableError
from bridge.events import Event, Origin, parse_event
from bridge.sources.ws_intake import Intake
from bridge.sources.ws_session import Disconnect, DisconnectKind, Health
from bridge.store import AcceptOutcome


def event(n: int) -> Event:
    body = {"event": "message.received", "event_id": f"evt_{n}", "inbox_id": "inb_1"}
    return parse_event(json.dumps(body).encode(), Origin.WEBSOCKET)


async def turn() -> None:
    """Let the callbacks already scheduled run: one turn of the event loop."""
    await asyncio.sleep(0)


class HeldSpool:
    """Records each batch handed over; a batch commits when the test says so."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._answers: list[asyncio.Future[list[AcceptOutcome | Exception]]] = []

    def accept(self, events: Sequence[Event]) -> asyncio.Future[list[AcceptOutcome | Exception]]:
        self.batches.append([e.event_id for e in events])
        answer: asyncio.Future[list[AcceptOutcome | Exception]]
        answer = asyncio.get_running_loop().create_future()
        self._answers.append(answer)
        return answer

    def commit(self, index: int, results: list[AcceptOutcome | Exception] | None = None) -> None:
        outcomes = results or [AcceptOutcome.ACCEPTED] * len(self.batches[index])
        self._answers[index].set_result(outcomes)

    def fail(self, index: int, exc: Exception) -> None:
        self._answers[index].set_exception(exc)

    @property
    def handed_over(self) -> int:
        return sum(map(len, self.batches))


def intake_of(spool: HeldSpool, limit: int) -> tuple[Intake, list[Disconnect]]:
    refusals: list[Disconnect] = []
    return Intake(spool, limit, Health(since=0.0), refusals.append), refusals  # type: ignore[arg-type]


async def test_no_more_than_the_limit_is_ever_uncommitted() -> None:
    spool = HeldSpool()
    intake, _ = intake_of(spool, limit=4)
    reader = asyncio.create_task(put_all(intake, range(10)))
    committed = batches_committed = 0
    while committed < 10:
        await turn()
        # Read and not committed: what the spool holds uncommitted plus what waits to go.
        assert intake.in_flight == spool.handed_over - committed <= 4
        if batches_committed < len(spool.batches):
            spool.commit(batches_committed)
            committed += len(spool.batches[batches_committed])
            batches_committed += 1
    assert await reader == [True] * 10
    assert [i for b in spool.batches for i in b] == [f"evt_{n}" for n in range(10)]


async def put_all(intake: Intake, numbers: range) -> list[bool]:
    return [await intake.put(event(n)) for n in numbers]


async def test_the_next_batch_goes_to_the_spool_while_one_commits() -> None:
    """Half the limit makes a batch: the store's writer has the next one queued before the
    commit it is running ends."""
    spool = HeldSpool()
    intake, _ = intake_of(spool, limit=4)
    reader = asyncio.create_task(put_all(intake, range(4)))
    await turn()
    assert spool.batches == [["evt_0", "evt_1"], ["evt_2", "evt_3"]]  # neither committed yet
    spool.commit(0)
    spool.commit(1)
    assert await reader == [True] * 4
    await intake.drain()
    assert intake.in_flight == 0


async def test_events_read_in_one_turn_go_together_at_its_end() -> None:
    spool = HeldSpool()
    intake, _ = intake_of(spool, limit=100)
    for n in range(3):
        assert await intake.put(event(n))
    assert spool.batches == []  # still this turn: more may come
    await turn()
    assert spool.batches == [["evt_0", "evt_1", "evt_2"]]


async def test_the_first_refusal_stops_the_intake_and_says_why_once() -> None:
    spool = HeldSpool()
    intake, refusals = intake_of(spool, limit=4)
    assert await intake.put(event(0))
    assert await intake.put(event(1))  # batch 0, full at 2
    assert await intake.put(event(2))  # batch 1, at the end of the turn
    await turn()
    full = SpoolFullError("spool is full")
    spool.commit(0, [AcceptOutcome.ACCEPTED, full])
    await turn()
    assert len(refusals) == 1
    (refusal,) = refusals
    assert refusal.kind is DisconnectKind.PUSHBACK
    assert "spool is full" in refusal.reason
    assert refusal.room_needed == len(event(1).raw)
    assert not await intake.put(event(3))  # read after the refusal: not handed over
    spool.fail(1, StoreUnavailableError("disk gone"))  # a later failure is not a second refusal
    await intake.drain()
    assert len(refusals) == 1
    assert spool.batches == [["evt_0", "evt_1"], ["evt_2"]]


async def test_a_failure_that_is_no_store_error_reconnects_with_backoff() -> None:
    # A bug an event's content finds comes back with it first in the replay: reconnecting at
    # once, as for a full spool whose room is awaited first, would spin.
    spool = HeldSpool()
    intake, refusals = intake_of(spool, limit=4)
    assert await intake.put(event(0))
    await turn()
    spool.commit(0, [RecursionError("maximum recursion depth exceeded")])
    await turn()
    (refusal,) = refusals
    assert refusal.kind is DisconnectKind.ACCEPT_FAILED
    assert refusal.kind.pace is Pace.NORMAL
    assert "RecursionError" in refusal.reason


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_small_limits_still_move_every_event(limit: int) -> None:
    spool = HeldSpool()
    intake, _ = intake_of(spool, limit=limit)
    reader = asyncio.create_task(put_all(intake, range(7)))
    done = 0
    while done < len(spool.batches) or not reader.done():
        await turn()
        if done < len(spool.batches):
            spool.commit(done)
            done += 1
    assert await reader == [True] * 7
    assert [i for b in spool.batches for i in b] == [f"evt_{n}" for n in range(7)]
    assert max(map(len, spool.batches)) <= max(1, limit // 2)
