"""``state.min_free`` against a disk of a known size: a burst must not run through the floor, and a
spool drained at the floor must take events again.

The store runs on a real SQLite file under tmp_path; only the filesystem's size is made up: the
disk holds exactly the state directory's files plus a chosen amount of free space, so its free
space moves as the database and its WAL really grow.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge.errors import SpoolFullError
from bridge.events import Event, Origin
from bridge.store import AcceptOutcome, AcceptResult, Store, StoreLimits, bounds, database

MiB = 1 << 20
PAYLOAD = 100_000


class SmallDisk:
    """A filesystem of ``capacity`` bytes holding only ``directory``'s files."""

    def __init__(self, directory: Path, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity
        self.fail = False  # statvfs refused (the directory renamed, its permissions changed)

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def free(self) -> int:
        return self.capacity - self.used()

    def statvfs(self, path: os.PathLike[str] | str) -> SimpleNamespace:
        assert Path(path) == self.directory
        if self.fail:
            raise PermissionError(13, "Permission denied", str(path))
        return SimpleNamespace(f_bavail=max(0, self.free()), f_blocks=self.capacity, f_frsize=1)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir()
    return directory


@pytest.fixture
def disk(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> SmallDisk:
    small = SmallDisk(state_dir, capacity=0)
    monkeypatch.setattr(bounds, "statvfs", small.statvfs)
    return small


def big_event(n: int, payload: int = PAYLOAD) -> Event:
    event_id = f"evt_big_{n}"
    raw = b'{"event_id": "%s", "pad": "%s"}' % (event_id.encode(), b"x" * payload)
    return Event(
        event_id=event_id,
        type="message.received",
        inbox_id="inb_1",
        thread_id=f"thr_{n}",
        sender="a@example.com",
        recipient="b@example.com",
        origin=Origin.WEBHOOK,
        received_at=1_700_000_000.0 + n,
        raw=raw,
    )


async def open_on(
    disk: SmallDisk, state_dir: Path, *, capacity: int, min_free: int, history: int = 0
) -> Store:
    disk.capacity = capacity  # the new database's files take their part of it
    return await Store.open(
        state_dir / "bridge.db", StoreLimits(max_bytes=1 << 30, min_free=min_free, history=history)
    )


async def fill_to_the_floor(
    store: Store, payload: int = PAYLOAD, most: int = 1000
) -> list[AcceptResult]:
    """Accept one event a commit, the sink down, until the floor refuses one: those accepted."""
    held: list[AcceptResult] = []
    for n in range(most):
        result = (await store.accept_batch([(big_event(n, payload), ["agent"])]))[0]
        if not isinstance(result, AcceptResult):
            assert isinstance(result, SpoolFullError), result
            return held
        held.append(result)
    raise AssertionError("the floor was never reached")


async def drain(store: Store, held: Sequence[AcceptResult], per_mark: int) -> None:
    """The sink comes back: ``held``'s rows marked delivered, ``per_mark`` to a transaction."""
    ids = [d.id for r in held for d in r.deliveries]
    for i in range(0, len(ids), per_mark):
        await store.mark_delivered_many(ids[i : i + per_mark])


def accepted(results: Sequence[object]) -> int:
    return sum(isinstance(r, AcceptResult) for r in results)


async def test_a_burst_between_two_disk_readings_stops_at_the_floor(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One reading for the whole burst: what the events take must come off it as they go.
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 3600.0)
    store = await open_on(disk, state_dir, capacity=24 * MiB, min_free=8 * MiB)
    try:
        results = await store.accept_batch([(big_event(n), ["agent"]) for n in range(200)])
        stored = [r for r in results if isinstance(r, AcceptResult)]
        refused = [r for r in results if isinstance(r, SpoolFullError)]
        assert stored
        assert len(stored) + len(refused) == 200
        assert all(r.outcome is AcceptOutcome.ACCEPTED for r in stored)
        assert all("less than min_free" in str(r) for r in refused)
        # Accepted up to the floor, not through it: the WAL and the database as written.
        assert disk.free() >= 8 * MiB, disk.free()
        assert len(stored) < 100  # 200 would take twice the room there was
    finally:
        await store.close()


async def test_a_spool_drained_at_the_floor_takes_events_again(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)  # read the disk at every check
    store = await open_on(disk, state_dir, capacity=24 * MiB, min_free=8 * MiB)
    try:
        held = await fill_to_the_floor(store)
        n = len(held) + 1
        assert not store.has_room
        # The sink comes back: every row is delivered and deleted. The files keep their size
        # (SQLite reuses the freed pages, never gives them back), so the disk looks as full.
        await store.mark_delivered_many([d.id for r in held for d in r.deliveries])
        assert store.spool_bytes == 0
        assert disk.free() < 8 * MiB + bounds.CHECKPOINT_MARGIN + bounds.disk_cost(PAYLOAD)
        assert store.has_room
        later = (await store.accept_batch([(big_event(n), ["agent"])]))[0]
        assert isinstance(later, AcceptResult), later
        assert later.outcome is AcceptOutcome.ACCEPTED
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("payload", "capacity", "min_free", "per_mark"),
    [(20_000, 12 * MiB, 1 * MiB, 10), (50_000, 16 * MiB, 2 * MiB, 20)],
)
async def test_a_spool_drained_at_the_floor_with_its_history_takes_events_again(
    disk: SmallDisk,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    payload: int,
    capacity: int,
    min_free: int,
    per_mark: int,
) -> None:
    # The drain copies each payload into the history: the freed pages go to it, and the WAL file
    # keeps the size those transactions gave it. Without that file's bytes back, the floor with a
    # checkpoint's margin stays out of reach for good, however empty the spool.
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)
    store = await open_on(disk, state_dir, capacity=capacity, min_free=min_free, history=1000)
    try:
        held = await fill_to_the_floor(store, payload, most=5000)
        assert not store.has_room
        await drain(store, held, per_mark)
        assert store.spool_bytes == 0
        assert store.has_room
        later = (await store.accept_batch([(big_event(len(held), payload), ["agent"])]))[0]
        assert isinstance(later, AcceptResult), later
        assert disk.free() >= min_free
    finally:
        await store.close()


async def test_a_reader_holding_a_snapshot_does_not_hold_the_drain_at_the_floor(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backup or a shell's open transaction keeps the WAL from being truncated. The writer must
    # not wait for it: were it to wait out its busy timeout (an hour here), the drain would hang.
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)
    monkeypatch.setattr(bounds, "TRUNCATE_RETRY", 0.0)
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 3600.0)
    store = await open_on(disk, state_dir, capacity=12 * MiB, min_free=1 * MiB, history=1000)
    reader = sqlite3.connect(state_dir / "bridge.db", isolation_level=None)
    try:
        held = await fill_to_the_floor(store, 20_000, most=5000)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM events").fetchone()  # a snapshot, held
        async with asyncio.timeout(60):
            await drain(store, held, 10)
        assert store.spool_bytes == 0
        reader.execute("COMMIT")  # the reader lets go: the next commit gives the WAL back
        # The next one is refused as the WAL still stands, but its transaction commits.
        await store.accept_batch([(big_event(len(held), 20_000), ["agent"])])
        assert store.has_room
        later = (await store.accept_batch([(big_event(len(held) + 1, 20_000), ["agent"])]))[0]
        assert isinstance(later, AcceptResult), later
    finally:
        reader.close()
        await store.close()


@pytest.mark.parametrize("history", [0, 1000])
@pytest.mark.parametrize("reading_at", [20, 60])
async def test_a_disk_reading_taken_inside_a_commit_keeps_the_commits_charges(
    disk: SmallDisk,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    history: int,
    reading_at: int,
) -> None:
    # The burst above, with the one-second reading running out part way through the commit's
    # checks: SQLite writes the commit's pages at COMMIT, so the new reading does not show the
    # events checked before it, and their charges must stand.
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 3600.0)
    store = await open_on(disk, state_dir, capacity=24 * MiB, min_free=8 * MiB, history=history)
    try:
        real, calls = bounds.time.monotonic, itertools.count()
        clock = SimpleNamespace(monotonic=lambda: real() + 7200.0 * (next(calls) >= reading_at))
        monkeypatch.setattr(bounds, "time", clock)
        results = await store.accept_batch([(big_event(n), ["agent"]) for n in range(200)])
        assert 0 < accepted(results) < 100
        assert disk.free() >= 8 * MiB, disk.free()
    finally:
        await store.close()


async def test_a_burst_after_a_drain_at_the_floor_keeps_the_floor(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Free pages in the database only count as room as far as the WAL can take the commit
    # without growing: a commit is appended there before any free page is reused.
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)
    store = await open_on(disk, state_dir, capacity=40 * MiB, min_free=8 * MiB)
    try:
        held = await fill_to_the_floor(store)
        await drain(store, held, 5)  # a few at a time
        assert disk.free() >= 8 * MiB
        assert store.has_room
        monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 3600.0)  # one reading for the burst
        results = await store.accept_batch([(big_event(1000 + i), ["agent"]) for i in range(150)])
        assert accepted(results) > 0  # the drained spool takes events again
        assert disk.free() >= 8 * MiB, disk.free()
    finally:
        await store.close()


async def test_a_disk_that_cannot_be_read_keeps_no_floor(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)
    store = await open_on(disk, state_dir, capacity=1 << 40, min_free=256 * MiB)
    try:
        disk.fail = True  # SQLite says when the disk is really full
        results = await store.accept_batch([(big_event(n, 500), ["agent"]) for n in range(5)])
        assert accepted(results) == 5
        assert store.has_room
    finally:
        await store.close()


async def test_min_free_zero_takes_events_while_the_disk_takes_them(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 3600.0)
    store = await open_on(disk, state_dir, capacity=1 << 40, min_free=0)
    try:
        disk.capacity = disk.used() + 2 * MiB  # room for the events, not for twice their size
        monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)
        store.has_room_for(0)  # a reading of the small disk
        monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 3600.0)
        results = await store.accept_batch([(big_event(n), ["agent"]) for n in range(12)])
        assert accepted(results) == 12
    finally:
        await store.close()


async def test_a_refused_large_event_leaves_readiness_once_others_get_in(
    disk: SmallDisk, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "DISK_CACHE_SECONDS", 0.0)
    store = await open_on(disk, state_dir, capacity=1 << 40, min_free=64 * MiB)
    try:
        disk.capacity = disk.used() + 64 * MiB + 12 * MiB  # 12 MiB above the floor
        big = (await store.accept_batch([(big_event(0, 5 * MiB), ["agent"])]))[0]
        assert isinstance(big, SpoolFullError)
        assert not store.has_room  # refusing what comes
        small = (await store.accept_batch([(big_event(1, 2000), ["agent"])]))[0]
        assert isinstance(small, AcceptResult)
        assert store.has_room  # taking events again: not full
    finally:
        await store.close()
