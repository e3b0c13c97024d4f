"""``state.min_free`` against a disk of a known size: a burst must not run through the floor, and a
spool drained at the floor must take events again.

The store runs on a real SQLite file under tmp_path; only the filesystem's size is made up: the
disk holds exactly the state directory's files plus a chosen amount of free space, so its free
space moves as the database and its WAL really grow.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge.errors import SpoolFullError
from bridge.events import Event, Origin
from bridge.store import AcceptOutcome, AcceptResult, Store, StoreLimits, bounds

MiB = 1 << 20
PAYLOAD = 100_000


class SmallDisk:
    """A filesystem of ``capacity`` bytes holding only ``directory``'s files."""

    def __init__(self, directory: Path, capacity: int) -> None:
        self.directory = directory
        self.capacity = capacity

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())

    def free(self) -> int:
        return self.capacity - self.used()

    def statvfs(self, path: os.PathLike[str] | str) -> SimpleNamespace:
        assert Path(path) == self.directory
        return SimpleNamespace(f_bavail=max(0, self.free()), f_frsize=1)


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


def big_event(n: int) -> Event:
    event_id = f"evt_big_{n}"
    raw = b'{"event_id": "%s", "pad": "%s"}' % (event_id.encode(), b"x" * PAYLOAD)
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


async def open_on(disk: SmallDisk, state_dir: Path, *, capacity: int, min_free: int) -> Store:
    disk.capacity = capacity  # the new database's files take their part of it
    return await Store.open(
        state_dir / "bridge.db", StoreLimits(max_bytes=1 << 30, min_free=min_free, history=0)
    )


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
        held: list[AcceptResult] = []
        n = 0
        while True:  # fill to the floor, the sink down
            result = (await store.accept_batch([(big_event(n), ["agent"])]))[0]
            n += 1
            if not isinstance(result, AcceptResult):
                assert isinstance(result, SpoolFullError), result
                break
            held.append(result)
            assert n < 200, "the floor was never reached"
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
