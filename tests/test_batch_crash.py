"""A batch is all or nothing across a crash: killed between its write and its commit, the process
leaves the spool as the last commit left it, though the batch was large enough that SQLite had
already written its uncommitted pages into the WAL.

The child commits a first batch through the Store and closes it, then runs a second, large batch's
write transaction on the writer-level API as the store's writer does (the accepts, then the cursor
and last_event_at in the same transaction) and stops short of COMMIT. The test SIGKILLs it there
and reopens the state.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bridge.events import Event, Origin, parse_event
from bridge.store import AcceptOutcome, AcceptResult, Store, StoreLimits

FIRST = 40  # events of the committed batch
SECOND = 3000  # events of the batch killed before its commit
PAD = 4000  # padding bytes of each event of the second batch: about 12 MB in all
LIMITS = StoreLimits(min_free=0)
Batch = list[tuple[Event, tuple[str, ...]]]


def make(n: int, origin: Origin, pad: int) -> Event:
    body = {
        "event": "message.received",
        "event_id": f"evt_{n:05d}",
        "inbox_id": "inb_1",
        "thread_id": f"thr_{n % 7}",
        "message": {"subject": "Grüße"},
        "pad": "x" * pad,
    }
    return parse_event(json.dumps(body, ensure_ascii=False).encode(), origin)


def batches() -> tuple[Batch, Batch]:
    """The two batches, built alike by the child and the test (the payloads are deterministic).

    The first batch ends with webhook events, one of them unrouted, so its last WebSocket event
    is not its last event; the second batch ends with a WebSocket event, so its commit would have
    moved the cursor.
    """
    first = [
        (
            make(n, Origin.WEBSOCKET if n < FIRST - 3 else Origin.WEBHOOK, 200 + n),
            () if n == FIRST - 2 else ("agent", "archive"),
        )
        for n in range(FIRST)
    ]
    second = [
        (make(n, Origin.WEBHOOK if n % 2 else Origin.WEBSOCKET, PAD), ("agent",))
        for n in range(FIRST, FIRST + SECOND)
    ]
    return first, second


CHILD = """
import asyncio, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_batch_crash import LIMITS, batches
from bridge.store import Store, database, queries, transactions
from bridge.store.bounds import Room
from bridge.plan import Plan

path = Path(sys.argv[1])
first, second = batches()

async def commit_first():
    store = await Store.open(path, LIMITS)
    results = await store.accept_batch(first)
    assert all(r.outcome.value == "accepted" for r in results), results
    await store.close()

asyncio.run(commit_first())

# One batch's write transaction as the store's writer runs it, short of COMMIT.
lock_fd, conn = database.open_writer(path, exclusive=True)
database.begin(conn)
tx = transactions.Tx(conn, queries.read_state(conn), None)
cursor = tx.cursor
planned = [(event, Plan(sinks=tuple(sinks))) for event, sinks in second]
results = transactions.accept_batch(tx, batch=planned, room=Room(path, LIMITS), clock=time.time)
assert all(r.outcome.value == "accepted" for r in results), results
assert tx.cursor != cursor
queries.set_metas(conn, {"cursor": tx.cursor, "last_event_at": tx.last_event_at})
assert conn.in_transaction
print("written", flush=True)
sys.stdin.read()  # killed here
"""


async def wait_for_line(stream: asyncio.StreamReader, line: bytes) -> None:
    """Read a child's stdout up to ``line`` (its structlog output shares the stream)."""
    async with asyncio.timeout(60):
        while (got := await stream.readline()) != line:
            assert got, f"child exited before printing {line!r}"


def file_size(path: Path) -> int:
    return path.stat().st_size  # a plain function: blocking on tmp_path is fine in a test


def routed_bytes(batch: Batch) -> int:
    return sum(len(event.raw) for event, sinks in batch if sinks)


def last_websocket_id(batch: Batch) -> str:
    return [e.event_id for e, _ in batch if e.origin is Origin.WEBSOCKET][-1]


async def pending(store: Store, sink: str) -> list[tuple[str, bytes]]:
    return [(d.event_id, d.payload) for d in await store.pending(sink, limit=10 * SECOND)]


async def test_a_batch_killed_before_its_commit_leaves_no_trace(tmp_path: Path) -> None:
    path = tmp_path / "state" / "bridge.db"
    first, second = batches()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), str(Path(__file__).parent),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        await wait_for_line(proc.stdout, b"written\n")
        # Not held in the child's memory alone: SQLite has spilled the uncommitted batch into
        # the WAL, where recovery must ignore it.
        wal = file_size(Path(f"{path}-wal"))
        assert wal > routed_bytes(second) // 2, f"WAL of {wal} bytes: the batch did not spill"
    finally:
        proc.kill()  # SIGKILL
        await proc.wait()

    store = await Store.open(path, LIMITS)
    try:
        for sink in ("agent", "archive"):
            assert await pending(store, sink) == [(e.event_id, e.raw) for e, s in first if s]
        assert store.cursor == last_websocket_id(first)
        assert store.cursor != first[-1][0].event_id
        assert store.spool_bytes == routed_bytes(first)
        assert await store.quarantine_list() == []

        # None of it was remembered either: the same batch is now accepted, every event of it.
        results = await store.accept_batch(second)
        assert all(
            isinstance(r, AcceptResult) and r.outcome is AcceptOutcome.ACCEPTED for r in results
        )
        stored = [(e.event_id, e.raw) for e, s in (*first, *second) if "agent" in s]
        assert await pending(store, "agent") == stored
        assert store.cursor == last_websocket_id(second)
        assert store.spool_bytes == routed_bytes(first) + routed_bytes(second)
    finally:
        await store.close()
