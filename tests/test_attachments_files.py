"""The attachment directory (``bridge.attachments.files``) on a real filesystem under tmp_path:
content-addressed names, modes, the bounds checked while writing, free disk, and retention by
age on an injected clock."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_store import Clock

from bridge.attachments.files import (
    DISK_HEADROOM,
    STALE_TEMP,
    TEMP_PREFIX,
    AttachmentFiles,
    Refused,
    free_disk,
)
from bridge.attachments.rules import Reason, Stored

DAY = 86400.0


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def files_in(tmp_path: Path, **kwargs: object) -> AttachmentFiles:
    options: dict[str, object] = {"max_bytes": 1 << 20, "max_total": 4 << 20, "min_free": 0}
    options.update(kwargs)
    return AttachmentFiles(tmp_path / "state" / "attachments", **options)  # type: ignore[arg-type]


async def store(files: AttachmentFiles, *chunks: bytes) -> Stored:
    writer = files.writer()
    try:
        for chunk in chunks:
            writer.write(chunk)
        return await writer.keep()
    finally:
        writer.discard()


def leftovers(files: AttachmentFiles) -> list[str]:
    return sorted(p.name for p in files.directory.iterdir() if p.name.startswith(TEMP_PREFIX))


async def test_a_file_is_named_by_its_sha256_with_modes_that_ignore_the_umask(
    tmp_path: Path, strict_umask: None
) -> None:
    files = files_in(tmp_path)
    await files.open()
    stored = await store(files, b"hello ", b"world")
    digest = hashlib.sha256(b"hello world").hexdigest()
    assert stored == Stored(files.directory / digest, digest, 11)
    assert stored.path.is_absolute()
    assert stored.path.read_bytes() == b"hello world"
    assert stat.S_IMODE(stored.path.stat().st_mode) == 0o640
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o750
    assert files.used == 11
    assert files.writing == 0
    assert leftovers(files) == []


async def test_an_existing_directory_is_narrowed_to_0750(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    files.directory.mkdir(parents=True)
    files.directory.chmod(0o777)
    await files.open()
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o750


async def test_the_same_content_is_stored_once(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    await files.open()
    first = await store(files, b"same bytes")
    second = await store(files, b"same ", b"bytes")
    assert first.path == second.path
    assert [p.name for p in files.directory.iterdir()] == [first.sha256]
    assert files.used == len(b"same bytes")


async def test_a_link_planted_at_a_name_is_replaced_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours")
    files = files_in(tmp_path)
    await files.open()
    digest = hashlib.sha256(b"content").hexdigest()
    (files.directory / digest).symlink_to(outside)
    assert files.existing(digest) is None
    stored = await store(files, b"content")
    assert not stored.path.is_symlink()
    assert stored.path.read_bytes() == b"content"
    assert outside.read_bytes() == b"not yours"


async def test_a_file_over_max_bytes_is_refused_while_it_is_written(tmp_path: Path) -> None:
    files = files_in(tmp_path, max_bytes=10)
    await files.open()
    writer = files.writer()
    writer.write(b"123456")
    with pytest.raises(Refused) as refused:
        writer.write(b"78901")
    assert refused.value.reason is Reason.TOO_LARGE
    writer.discard()
    assert list(files.directory.iterdir()) == []
    assert files.writing == 0
    assert (await store(files, b"1234567890")).size == 10  # exactly the bound fits


async def test_the_directory_total_counts_downloads_in_progress(tmp_path: Path) -> None:
    files = files_in(tmp_path, max_bytes=10, max_total=25)
    await files.open()
    await store(files, b"a" * 10)
    one, two = files.writer(), files.writer()
    one.write(b"b" * 10)
    with pytest.raises(Refused) as refused:
        two.write(b"c" * 6)  # 10 stored + 10 being written + 6 > 25
    assert refused.value.reason is Reason.STORE_FULL
    two.write(b"c" * 5)
    await one.keep()
    await two.keep()
    assert files.used == 25
    with pytest.raises(Refused) as full:
        files.writer()
    assert full.value.reason is Reason.STORE_FULL


async def test_what_the_directory_holds_counts_at_open(tmp_path: Path) -> None:
    files = files_in(tmp_path)
    await files.open()
    await store(files, b"x" * 100)
    again = files_in(tmp_path)
    await again.open()
    assert again.used == 100


async def test_free_disk_never_goes_below_min_free_plus_headroom(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    free = free_disk(tmp_path)
    # The spool's floor sits half a headroom under what is free now: ingest still has room (the
    # disk would have to lose that much meanwhile), attachments have none.
    files = files_in(tmp_path, min_free=free - DISK_HEADROOM // 2)
    await files.open()
    with pytest.raises(Refused) as refused:
        files.writer()
    assert refused.value.reason is Reason.NO_SPACE
    assert list(files.directory.iterdir()) == []
    roomy = files_in(tmp_path, min_free=max(0, free - DISK_HEADROOM - (256 << 20)))
    await roomy.open()
    assert (await store(roomy, b"fits")).size == 4


async def test_a_directory_that_cannot_be_made_refuses_every_write(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the directory should be")
    files = files_in(tmp_path)
    with pytest.raises(NotADirectoryError):
        await files.open()
    with pytest.raises(Refused) as refused:
        files.writer()
    assert refused.value.reason is Reason.WRITE_FAILED


async def test_retention_removes_only_what_is_older_than_it(tmp_path: Path) -> None:
    clock = Clock()
    files = files_in(tmp_path, clock=clock)
    await files.open()
    old = await store(files, b"old")
    clock.now += 6 * DAY
    young = await store(files, b"young")
    clock.now += 1 * DAY + 1
    assert await files.sweep(7 * DAY) == 1
    assert not old.path.exists()
    assert young.path.read_bytes() == b"young"
    assert files.used == len(b"young")
    assert files.existing(old.sha256) is None


@pytest.mark.parametrize("how", ["needed", "stored again"])
async def test_a_file_needed_again_starts_its_age_over(tmp_path: Path, how: str) -> None:
    clock = Clock()
    files = files_in(tmp_path, clock=clock)
    await files.open()
    stored = await store(files, b"again")
    clock.now += 6 * DAY
    if how == "needed":
        assert files.existing(stored.sha256) == stored
    else:
        assert await store(files, b"again") == stored
    clock.now += 6 * DAY
    assert await files.sweep(7 * DAY) == 0
    clock.now += 1 * DAY + 1
    assert await files.sweep(7 * DAY) == 1
    assert not stored.path.exists()


async def test_a_full_directory_makes_room_from_the_least_recently_needed_old_files(
    tmp_path: Path,
) -> None:
    clock = Clock()
    files = files_in(tmp_path, max_bytes=10, max_total=30, evict_after=3600.0, clock=clock)
    await files.open()
    oldest = await store(files, b"a" * 10)
    clock.now += 60
    needed = await store(files, b"b" * 10)
    clock.now += 60
    older = await store(files, b"c" * 10)
    clock.now += 3600.0
    assert files.existing(needed.sha256) == needed  # needed again: young once more
    assert await files.make_room(5) == (1, 10)  # 30 stored + 5 > 30: one file frees enough
    assert not oldest.path.exists()
    assert needed.path.exists()
    assert older.path.exists()
    assert files.used == 20
    assert await files.make_room(10) == (0, 0)  # fits now: nothing more goes
    assert older.path.exists()
    await store(files, b"d" * 10)
    clock.now += 1  # the file stored second-to-last is now past the hour, by a second
    assert await files.make_room(10) == (1, 10)
    assert not older.path.exists()
    # Everything left was needed within the hour: nothing may go, the next write is refused.
    assert await files.make_room(10) == (0, 0)
    assert files.used == 20
    await store(files, b"e" * 10)
    with pytest.raises(Refused) as full:
        files.writer()
    assert full.value.reason is Reason.STORE_FULL


async def test_making_room_leaves_downloads_in_progress_and_foreign_files(
    tmp_path: Path,
) -> None:
    clock = Clock()
    files = files_in(tmp_path, max_bytes=10, max_total=20, evict_after=60.0, clock=clock)
    await files.open()
    foreign = files.directory / "notes.txt"
    foreign.write_bytes(b"not ours")
    os.utime(foreign, (clock.now - DAY, clock.now - DAY))
    stored = await store(files, b"s" * 10)
    live = files.writer()
    live.write(b"w" * 5)
    clock.now += 61
    assert await files.make_room(10) == (1, 10)  # 10 stored + 5 written + 10 > 20
    assert not stored.path.exists()
    assert foreign.read_bytes() == b"not ours"
    assert live.path.exists()
    live.write(b"w" * 5)
    assert (await live.keep()).size == 10


async def test_a_sweep_removes_temporary_files_of_dead_downloads_only(tmp_path: Path) -> None:
    clock = Clock()
    files = files_in(tmp_path, clock=clock)
    await files.open()
    dead = files.directory / f"{TEMP_PREFIX}dead"
    dead.write_bytes(b"partial")
    os.utime(dead, (clock.now - STALE_TEMP - 1, clock.now - STALE_TEMP - 1))
    live = files.writer()
    live.write(b"in progress")
    stranger = files.directory / "notes.txt"
    stranger.write_text("not ours to remove")
    os.utime(stranger, (0, 0))
    assert await files.sweep(DAY) == 0
    assert not dead.exists()
    assert live.path.exists()
    assert stranger.exists()
    live.discard()
