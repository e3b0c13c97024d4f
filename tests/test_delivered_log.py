"""The delivered log: a sink worker goes on once its rows' ids are written there, before their
mark commits; a crash in between delivers none of them again; the log never names another row.

The files are real, under tmp_path; the crash is a real SIGKILL of a child process; a write that
fails is a real one, cut short by the child's file size limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from bridge import delivery
from bridge.config import SinkConfig
from bridge.delivery import SinkWorker
from bridge.errors import StoreError
from bridge.events import Event, Origin, parse_event
from bridge.metrics import Metrics
from bridge.sinks import SINK_TYPES
from bridge.store import Delivery, Store, StoreLimits, delivered_log
from bridge.store.delivered_log import DeliveredLog, log_paths, read_ids
from bridge.store.marks import DeliveredMarks
from tests.conftest import make_config, read_lines, wait_until, writer_held

LIMITS = StoreLimits(min_free=0, history=100)
TOKEN = "0123abcd"
H = b"#0123abcd\n"  # the first line of a log file of TOKEN's database


def event(n: int, thread: str = "thr_1") -> Event:
    body = {"event": "message.received", "event_id": f"evt_{n:04d}", "inbox_id": "inb_1",
            "thread_id": thread}  # fmt: skip
    return parse_event(json.dumps(body).encode(), Origin.WEBHOOK)


def token_of(database: Path) -> str:
    """The token a store keeps in its database's meta table (an exclusive open makes it)."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        (token,) = conn.execute("SELECT value FROM meta WHERE key = 'instance'").fetchone()
    return str(token)


def log_header(database: Path) -> bytes:
    return b"#" + token_of(database).encode() + b"\n"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(tmp_path / "state" / "bridge.db", LIMITS)
    try:
        yield store
    finally:
        await store.close()


# -- the files ------------------------------------------------------------------------------------


def test_ids_are_read_back_in_order_and_a_torn_or_foreign_line_is_skipped(tmp_path: Path) -> None:
    database = tmp_path / "bridge.db"
    log = DeliveredLog(database, TOKEN)
    assert log.write([3, 1, 2])
    assert log.write([7])
    log.committed([1])  # committed ids stay in the file until the whole file is
    assert read_ids(database, TOKEN) == [3, 1, 2, 7]
    assert [p.stat().st_mode & 0o777 for p in log_paths(database)] == [0o600, 0o600]
    first = log_paths(database)[0]
    with first.open("ab") as f:
        f.write(b"x9\n\n-4\n12")  # not ids, and a last line whose newline never came
    assert read_ids(database, TOKEN) == [3, 1, 2, 7]
    log.close()
    assert first.exists()  # 3, 2 and 7 are not committed: the next open applies them


def test_a_file_is_emptied_once_every_id_in_it_is_committed_and_the_two_take_turns(
    tmp_path: Path,
) -> None:
    database = tmp_path / "bridge.db"
    one, two = log_paths(database)
    log = DeliveredLog(database, TOKEN, rotate_bytes=8)
    assert log.write([10, 11, 12])  # 9 bytes: past the turn
    log.committed([10, 11])  # the second file is empty: it takes over
    assert log.write([13])
    assert (one.read_bytes(), two.read_bytes()) == (H + b"10\n11\n12\n", H + b"13\n")
    log.committed([])
    assert one.read_bytes() == H + b"10\n11\n12\n"  # 12 is in it, not committed
    log.committed([12])
    assert (one.read_bytes(), two.read_bytes()) == (H, H + b"13\n")
    assert log.write([14, 15])  # past the turn again, 13-15 not committed: the first takes over
    log.committed([14])
    assert log.write([16])
    assert (one.read_bytes(), two.read_bytes()) == (H + b"16\n", H + b"13\n14\n15\n")
    assert [i in log for i in (13, 14, 15, 16)] == [True, False, True, True]
    assert len(log) == 3
    log.committed([16])
    log.close()
    assert not one.exists()  # nothing left to apply in it
    assert two.read_bytes() == H + b"13\n14\n15\n"
    assert read_ids(database, TOKEN) == [13, 14, 15]


def test_an_id_whose_mark_never_commits_is_carried_over_and_the_files_stay_bounded(
    tmp_path: Path,
) -> None:
    """A mark may never commit in this process (its sink's worker stopped by a reload): its id is
    written again to the file that takes over, so the other can still be emptied."""
    database = tmp_path / "bridge.db"
    one, two = log_paths(database)
    log = DeliveredLog(database, TOKEN, rotate_bytes=8)
    assert log.write([10, 11, 12])
    log.committed([10, 11])  # 12 never commits
    assert log.write([20, 21, 22])
    log.committed([20, 21, 22])
    assert (one.read_bytes(), two.read_bytes()) == (H, H + b"20\n21\n22\n12\n")
    assert 12 in log
    assert read_ids(database, TOKEN) == [20, 21, 22, 12]
    assert log.write([30])  # the emptied file took over
    log.committed([12])
    assert (one.read_bytes(), two.read_bytes()) == (H + b"30\n", H)
    log.close()
    assert one.read_bytes() == H + b"30\n"
    assert not two.exists()


def test_a_clean_close_with_every_id_committed_leaves_no_file(tmp_path: Path) -> None:
    database = tmp_path / "bridge.db"
    log = DeliveredLog(database, TOKEN)
    assert log.write([1, 2])
    log.committed([2, 1])
    log.close()
    assert [p.exists() for p in log_paths(database)] == [False, False]
    assert read_ids(database, TOKEN) == []


def test_an_id_given_twice_is_written_and_counted_once(tmp_path: Path) -> None:
    """Ids read back after a crash can repeat (a carry copies them): counted twice, the file would
    never be known emptied of them, nor removed by a clean close."""
    database = tmp_path / "bridge.db"
    log = DeliveredLog(database, TOKEN)
    assert log.write([5, 5, 6])
    assert len(log) == 2
    assert read_ids(database, TOKEN) == [5, 6]
    log.committed([5, 6])
    log.close()
    assert [p.exists() for p in log_paths(database)] == [False, False]


SHORT_WRITE_CHILD = """
import json, resource, signal, sys
from pathlib import Path
from structlog.testing import capture_logs
from bridge.store.delivered_log import DeliveredLog

database = Path(sys.argv[1])
log = DeliveredLog(database, "0123abcd")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, write(2) fails instead
resource.setrlimit(resource.RLIMIT_FSIZE, (32, 32))
with capture_logs() as logs:
    results = [log.write(range(n, n + 3)) for n in (1000, 1003, 1006, 1009)]
    torn = {"taking": log.taking, "later": log.write([9999])}
    log.committed([1000, 1001])
    torn["one_open"] = log.taking
    log.committed([1002])  # every id of the torn file committed: it is emptied
    torn["mended"] = log.taking
    torn["after"] = log.write([2000, 2001, 2002, 2003])  # 30 bytes: fits in 32
    torn["beyond"] = log.write([2004])  # the limit again
    log.committed([2000, 2001, 2002, 2003])
    torn["still_full"] = log.write(range(3000, 3005))  # 25 bytes: the disk is still "full"
    log.committed([])
    torn["again"] = log.write([4000])
print(json.dumps({"results": results, **torn, "events": [e["event"] for e in logs]}))
sys.stdout.write(Path(str(database) + ".delivered-0").read_bytes().decode())
"""


async def test_after_a_failed_or_short_write_the_log_takes_no_ids_until_that_file_is_emptied(
    tmp_path: Path,
) -> None:
    """An id written after a torn line would run into it and name another row: after a write
    that does not go through whole, every write answers False (its worker then waits for the
    mark's commit) until every id in the torn file is committed and the file emptied; what was
    torn is not read back as an id. A disk that stays full is warned of once, not per write."""
    database = tmp_path / "bridge.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SHORT_WRITE_CHILD, str(database), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    first, *content = out.decode().split("\n", 1)
    report = json.loads(first)
    # A 10-byte first line, then 15 bytes per write: the first fits in 32, the second is cut at
    # 32 bytes, the rest are refused.
    assert report["results"] == [True, False, False, False]
    assert (report["taking"], report["later"]) == (False, False)
    assert (report["one_open"], report["mended"]) == (False, True)
    # Emptied back to its first line, the file takes ids from a fresh line; past the limit again
    # it is torn again, and mended again once its ids commit. A write refused again before any
    # went through is the same trouble: no second warning.
    assert (report["after"], report["beyond"]) == (True, False)
    assert (report["still_full"], report["again"]) == (False, True)
    assert report["events"] == [
        "store.delivered_log_failed",
        "store.delivered_log_resumed",
        "store.delivered_log_failed",
        "store.delivered_log_resumed",
    ]
    assert content == [H.decode() + "4000\n"]
    assert read_ids(database, TOKEN) == [4000]


def test_a_torn_file_that_cannot_be_emptied_takes_no_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut line stays while the file cannot be emptied: an id written after it would run into
    it ("33" + "727" is 33727, another row). A disk that takes two bytes and then an I/O error on
    ftruncate cannot be had on demand: both are injected."""
    database = tmp_path / "bridge.db"
    log = DeliveredLog(database, TOKEN)
    write = os.write
    monkeypatch.setattr(delivered_log.os, "write", lambda fd, data: write(fd, data[:2]))
    assert not log.write([33, 34])

    def failing(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(delivered_log.os, "write", write)
    monkeypatch.setattr(delivered_log.os, "ftruncate", failing)
    log.committed([33, 34])  # every id of the torn file committed, but it cannot be emptied
    assert not log.taking
    assert not log.write([727])
    assert read_ids(database, TOKEN) == []  # "33" has no newline: not an id
    monkeypatch.undo()
    log.committed([])  # the next commit tries again
    assert log.taking
    assert log.write([727])
    assert read_ids(database, TOKEN) == [727]
    log.close()
    log.committed([727])  # a mark committing after the close changes nothing on disk
    assert read_ids(database, TOKEN) == [727]


async def test_a_torn_file_is_not_read_back_as_ids(tmp_path: Path) -> None:
    """What a cut write left: whole lines are ids (applying one again changes nothing: its
    worker waited for its commit), the cut line is skipped."""
    database = tmp_path / "bridge.db"
    one, _ = log_paths(database)
    one.write_bytes(H + b"1000\n1001\n1002\n1003\n10")
    assert read_ids(database, TOKEN) == [1000, 1001, 1002, 1003]


# -- the store ------------------------------------------------------------------------------------


CRASH_CHILD = """
import asyncio, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from test_delivered_log import LIMITS, event
from bridge.store import Store

async def main():
    store = await Store.open(Path(sys.argv[1]), LIMITS)
    await store.accept_batch([(event(n), ("agent", "audit")) for n in range(6)])
    rows = await store.pending("agent")
    # Delivered to "agent", written ahead of marks that are never asked for: a crash comes first.
    assert store.note_delivered([row.id for row in rows[:4]])
    print(json.dumps([row.event_id for row in rows[:4]]), flush=True)
    sys.stdin.read()  # killed here

asyncio.run(main())
"""


async def test_deliveries_written_ahead_are_not_delivered_again_after_a_sigkill(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "bridge.db"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_CHILD, str(path), str(Path(__file__).parent),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            while not (line := await proc.stdout.readline()).startswith(b"["):
                assert line, "the child exited early"
        delivered = json.loads(line)
    finally:
        proc.kill()  # SIGKILL
        await proc.wait()
    assert len(read_ids(path, token_of(path))) == 4

    store = await Store.open(path, LIMITS)
    try:
        assert [d.event_id for d in await store.pending("agent")] == ["evt_0004", "evt_0005"]
        assert len(await store.pending("audit")) == 6  # another sink's rows are its own
        assert read_ids(path, token_of(path)) == []  # applied, and the log started afresh
        await store.mark_delivered_many([d.id for d in await store.pending("audit")])
        history = await store.history(sink="agent")
        assert sorted(h.event_id for h in history) == sorted(delivered)
    finally:
        await store.close()
    assert [p.exists() for p in log_paths(path)] == [False, False]


async def three_rows_stored(path: Path) -> list[Delivery]:
    """A database at ``path`` holding three events pending for "agent", closed; their rows."""
    store = await Store.open(path, LIMITS)
    try:
        await store.accept_batch([(event(n), ("agent",)) for n in range(3)])
        return await store.pending("agent")
    finally:
        await store.close()


async def test_ids_past_the_database_s_last_row_are_not_applied(tmp_path: Path) -> None:
    """A log that outlived its database (deleted, or restored from an older copy) may name rows
    the database has not made yet: they are skipped, not marked delivered before they exist."""
    path = tmp_path / "state" / "bridge.db"
    rows = await three_rows_stored(path)
    last = rows[-1].id
    log_paths(path)[1].write_bytes(
        log_header(path) + b"%d\n%d\n%d\n" % (rows[0].id, last + 1, last + 2)
    )

    store = await Store.open(path, LIMITS)
    try:
        assert [d.id for d in await store.pending("agent")] == [r.id for r in rows[1:]]
        await store.accept_batch([(event(n), ("agent",)) for n in range(3, 5)])
        later = await store.pending("agent")
        assert [d.event_id for d in later] == ["evt_0001", "evt_0002", "evt_0003", "evt_0004"]
        assert later[-2].id == last + 1  # the ids the log named: rows it never meant
    finally:
        await store.close()


async def test_a_store_opened_beside_the_daemon_writes_no_log(tmp_path: Path) -> None:
    """The operator's commands open the state beside the daemon: the log is the daemon's."""
    path = tmp_path / "state" / "bridge.db"
    store = await Store.open(path, LIMITS)
    try:
        await store.accept_batch([(event(0), ("agent",))])
        (row,) = await store.pending("agent")
        other = await Store.open(path, LIMITS, exclusive=False)
        try:
            assert not other.note_delivered([row.id])
            assert not other.noted(row.id)
        finally:
            await other.close()
        assert store.note_delivered([row.id])
        assert store.noted(row.id)
        await store.mark_delivered_many([row.id])
        assert not store.noted(row.id)
    finally:
        await store.close()


# -- the worker -----------------------------------------------------------------------------------


def file_worker(store: Store, sink_config: SinkConfig) -> SinkWorker:
    """A file sink's worker delivering one row at a time: each row is its own mark."""
    sink = SINK_TYPES["file"].factory(sink_config)
    return SinkWorker(sink_config, sink, store, Metrics(), batch=1)


async def test_a_worker_goes_on_in_thread_order_while_its_marks_wait_for_the_writer(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the store's writer held up, a worker still delivers the rows after the first, in
    order, up to ``MARKS_AHEAD`` rows ahead of their marks; the next one waits for the commit.
    Once the writer goes on, every mark commits and nothing is delivered twice."""
    monkeypatch.setattr(delivery, "MARKS_AHEAD", 3)
    lines_file = tmp_path / "agent.jsonl"
    config = make_config(
        tmp_path, sinks={"agent": {"type": "file", "path": str(lines_file), "fsync": "always"}}
    )
    await store.accept_batch([(event(n), ("agent",)) for n in range(6)])
    rows = await store.pending("agent")
    worker = file_worker(store, config.sinks["agent"])
    async with writer_held(store):
        await worker.start()
        # Three rows go ahead of their marks, the fourth is delivered and waits for its commit.
        await wait_until(lambda: len(read_lines(lines_file)) == 4)
        assert [store.noted(row.id) for row in rows] == [True] * 3 + [False] * 3
        assert (await store.sink_counts())["agent"].pending == 6  # nothing committed yet
    await wait_until(lambda: len(read_lines(lines_file)) == 6)
    await wait_until(lambda: worker.state.delivered == 6)
    await worker.stop(2)
    assert [line["event_id"] for line in read_lines(lines_file)] == [r.event_id for r in rows]
    assert "agent" not in await store.sink_counts()
    assert not any(store.noted(row.id) for row in rows)


async def test_a_log_naming_another_database_is_not_applied(tmp_path: Path) -> None:
    """A log left beside a database that was then replaced (a fresh one, or another restored)
    names that database: its ids are not this one's rows, whatever their range."""
    path = tmp_path / "state" / "bridge.db"
    rows = await three_rows_stored(path)
    log_paths(path)[0].write_bytes(b"#another\n" + b"".join(b"%d\n" % r.id for r in rows))

    store = await Store.open(path, LIMITS)
    try:
        assert [d.id for d in await store.pending("agent")] == [r.id for r in rows]
        assert not any(store.noted(r.id) for r in rows)
    finally:
        await store.close()


async def test_marks_owed_at_open_stay_known_and_commit_once_the_store_can_write(
    tmp_path: Path,
) -> None:
    """The marks a crash left cannot commit at the next open (the disk still full): their ids go
    into the new log, so their rows are known delivered meanwhile, and commit once the store can
    write. The store's writes are stand-ins here, through the callables the log is given: the
    real store cannot open writable and refuse this one write on demand."""
    database = tmp_path / "bridge.db"
    log_paths(database)[0].write_bytes(H + b"4\n5\n9\n")
    writable = asyncio.Event()
    commits: list[list[int]] = []

    async def mark(ids: Sequence[int]) -> None:
        if not writable.is_set():
            raise StoreError("disk full")
        commits.append(list(ids))

    async def blocking(fn: Callable[..., object], *args: object) -> object:
        return fn(*args)

    told: list[list[int]] = []
    opened: list[DeliveredMarks] = []

    def committed(ids: Sequence[int]) -> None:  # as the store does: empty the log, tell readers
        opened[0].log.committed(ids)
        told.append(list(ids))

    marks = await DeliveredMarks.open(database, TOKEN, last_id=8, mark=mark, committed=committed,
                                      wait_writable=writable.wait, blocking=blocking)  # fmt: skip
    assert marks is not None
    opened.append(marks)
    try:
        assert [i in marks.log for i in (4, 5, 9)] == [True, True, False]  # 9: past the last id
        assert read_ids(database, TOKEN) == [4, 5]
        assert told == []
        writable.set()
        await wait_until(lambda: commits == [[4, 5]])
        assert told == [[4, 5]]
        assert len(marks.log) == 0
    finally:
        await marks.close()
    assert [p.exists() for p in log_paths(database)] == [False, False]


async def test_marks_cut_short_by_a_reload_are_committed_by_the_store(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload stops a sink's worker while the store cannot commit its marks: the rows it wrote
    ahead are neither left pending nor delivered again by the worker that takes over, which
    goes on with the rest."""
    monkeypatch.setattr(delivery, "MARKS_AHEAD", 3)
    monkeypatch.setattr(delivery, "MARK_GRACE", 0.05)
    lines_file = tmp_path / "agent.jsonl"
    config = make_config(tmp_path, sinks={"agent": {"type": "file", "path": str(lines_file)}})
    await store.accept_batch([(event(n), ("agent",)) for n in range(6)])
    rows = await store.pending("agent")
    async with writer_held(store):
        first = file_worker(store, config.sinks["agent"])
        await first.start()
        await wait_until(lambda: len(read_lines(lines_file)) == 4)
        await first.stop(0)  # its marks' drain gives up: the rows stay written ahead
        assert [store.noted(row.id) for row in rows] == [True] * 3 + [False] * 3
    second = file_worker(store, config.sinks["agent"])
    await second.start()

    async def nothing_pending() -> bool:
        return "agent" not in await store.sink_counts()

    try:
        await wait_until(nothing_pending)
    finally:
        await second.stop(2)
    ids = [line["event_id"] for line in read_lines(lines_file)]
    # The fourth row waited for its mark, cut short: delivered again, as a delivery under way.
    assert ids == [r.event_id for r in rows[:4]] + [r.event_id for r in rows[3:]]
    assert not any(store.noted(row.id) for row in rows)
