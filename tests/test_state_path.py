"""``state.path`` and the files the sinks write, judged before anything starts: a file there that is
no SQLite database is a wrong path, refused (exit 2) and never moved aside as a damaged database
would be; a directory that can never exist is refused; no file sink may write the state database's
files or another sink's file.

Real files under tmp_path, real stores, the commands in a subprocess where their exit code counts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.errors import StoreError
from bridge.sinks import SINK_TYPES
from bridge.state_files import COMPANIONS as STATE_COMPANIONS
from bridge.state_files import MOVED_ASIDE, SQLITE_HEADER, foreign_file, open_here
from bridge.store import Store
from bridge.store.delivered_log import DeliveredLog
from tests.conftest import bridge_config_dict, running_bridge, write_config
from tests.test_cli import bridge, webhook_only, write
from tests.test_config import BASE, merged, problems

NOT_A_DATABASE = "is not a state database: it does not begin with the SQLite header"
SOME_OTHER_FILE = (
    ", so it is some other file (if it was the state database, move it aside yourself: a file "
    "that cannot be recognised is left as it is)"
)
PRECIOUS = "openmail:\n  api_key: keep-me\n"


def listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# --- a file that is no database ------------------------------------------------------------


def test_check_and_run_refuse_a_state_path_naming_the_config_itself(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write(config, webhook_only(tmp_path, state={"path": "./config.yaml"}))
    before = config.read_bytes()
    for command in ("check", "run"):
        result = bridge(tmp_path, command, "-c", str(config))
        # 2, not 1: systemd's RestartPreventExitStatus=2 stops the restart loop.
        assert result.returncode == 2, (command, result.stderr)
        assert f"  state.path: {config} {NOT_A_DATABASE}{SOME_OTHER_FILE}" in (
            result.stderr.splitlines()
        ), (command, result.stderr)
    assert config.read_bytes() == before
    assert listing(tmp_path) == ["config.yaml"]  # nothing moved aside, no lock, no WAL


def test_an_empty_file_is_a_database_yet_to_be_made(tmp_path: Path) -> None:
    (tmp_path / "bridge.db").touch()  # SQLite makes a database of an empty file
    config = load_config(
        write(tmp_path / "c.yaml", webhook_only(tmp_path, state={"path": "bridge.db"})),
        sink_types=SINK_TYPES,
        env={},
    )
    assert config.state.path == tmp_path / "bridge.db"


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_state_path_that_is_no_file_is_refused(tmp_path: Path, kind: str) -> None:
    state = tmp_path / "state"
    state.mkdir() if kind == "directory" else os.mkfifo(state)
    found = problems(tmp_path, merged(BASE, {"state": {"path": str(state)}}))
    what = "a directory" if kind == "directory" else "not a regular file"
    assert found == [f"state.path: {state} is {what}, not a state database file"]


@pytest.mark.parametrize("exclusive", [True, False], ids=["daemon", "beside-it"])
async def test_the_store_refuses_a_file_that_is_no_database_and_never_moves_it(
    tmp_path: Path, exclusive: bool
) -> None:
    # The config refuses it first; the store holds the line too (the file may be replaced
    # between the two, and not every caller reads a config).
    path = tmp_path / "bridge.db"
    path.write_text(PRECIOUS)
    with pytest.raises(StoreError, match=NOT_A_DATABASE) as caught:
        await Store.open(path, exclusive=exclusive)
    assert "it was left as it is" in str(caught.value)
    assert path.read_text() == PRECIOUS
    assert not [name for name in listing(tmp_path) if MOVED_ASIDE in name]


async def test_a_damaged_database_is_still_moved_aside(tmp_path: Path) -> None:
    # The SQLite header and garbage after it: a database that was damaged, not a wrong path.
    path = tmp_path / "bridge.db"
    path.write_bytes(SQLITE_HEADER + b"\xa5" * 8192)
    store = await Store.open(path)
    await store.close()
    (aside,) = [name for name in listing(tmp_path) if MOVED_ASIDE in name]
    assert (tmp_path / aside).read_bytes().startswith(SQLITE_HEADER)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # a fresh database in its place
        assert conn.execute("PRAGMA user_version").fetchone()[0] > 0


async def test_a_database_whose_first_page_was_zeroed_is_moved_aside(tmp_path: Path) -> None:
    # A crash can leave a page of zeros where the header was: damage, not some other file.
    path = tmp_path / "bridge.db"
    store = await Store.open(path)
    await store.close()
    with path.open("r+b") as file:
        file.write(bytes(4096))
    config = write(tmp_path / "c.yaml", webhook_only(tmp_path, state={"path": str(path)}))
    assert load_config(config, sink_types=SINK_TYPES, env={}).state.path == path
    store = await Store.open(path)
    await store.close()
    assert [name for name in listing(tmp_path) if MOVED_ASIDE in name]


def test_dlq_says_a_file_is_not_a_state_database(tmp_path: Path) -> None:
    # README: a wrong path exits 2 naming where it looked. It said "corrupt ... moved aside
    # when the daemon next starts" with exit 1, which it would not be.
    other = tmp_path / "passwd"
    other.write_text("root:x:0:0:root:/root:/bin/sh\n")
    result = bridge(tmp_path, "dlq", "list", "--state", str(other))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"openmail-bridge: {other} {NOT_A_DATABASE}{SOME_OTHER_FILE} (the path is from --state)\n"
    )
    config = write(tmp_path / "config.yaml", webhook_only(tmp_path, state={"path": "passwd"}))
    result = bridge(tmp_path, "dlq", "list", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert f"(the path is from state.path of {config}, or its default)" in result.stderr
    assert other.read_text() == "root:x:0:0:root:/root:/bin/sh\n"


# --- a directory that can never exist -----------------------------------------------------------


def test_run_refuses_a_state_directory_under_a_file_as_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("notes\n")
    config = write(
        tmp_path / "config.yaml", webhook_only(tmp_path, state={"path": "notes.txt/bridge.db"})
    )
    result = bridge(tmp_path, "run", "-c", str(config))
    assert result.returncode == 2, result.stderr  # it was 1, in a restart loop
    assert f"  state.path: {tmp_path / 'notes.txt'} is a file" in result.stderr


# --- file sinks on the store's files or on each other --------------------------------------------


def test_check_refuses_file_sinks_on_the_state_database_and_on_each_other(tmp_path: Path) -> None:
    data = webhook_only(
        tmp_path,
        state={"path": "./same.db"},
        sinks={
            "a": {"type": "file", "path": "./same.db"},
            "b": {"type": "file", "path": "./same.db-wal"},
            "c": {"type": "file", "path": "./c.jsonl"},
            "d": {"type": "file", "path": "./c.jsonl"},
        },
    )
    config = write(tmp_path / "config.yaml", data)
    # From another directory: relative paths resolve against the config file's.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = bridge(elsewhere, "check", "-c", str(config))
    assert result.returncode == 2, result.stderr
    db, spool = tmp_path / "same.db", "a file sink must not write the store's files"
    assert result.stderr.splitlines()[1:] == [
        f"  sinks.a.path: {db} is the state database (state.path {db}): {spool}",
        f"  sinks.b.path: {db}-wal is the state database's write-ahead log (state.path {db}): "
        f"{spool}",
        f"  sinks.d.path: {tmp_path / 'c.jsonl'} is also the path of sink c: two sinks cannot "
        "write one file (their lines would interleave)",
    ]


def sinks(tmp_path: Path, **paths: str | dict[str, Any]) -> list[str]:
    """The problems of the base config with these file sinks (state at tmp_path/state/)."""
    bodies = {
        name: {"type": "file", "path": body} if isinstance(body, str) else {"type": "file", **body}
        for name, body in paths.items()
    }
    data = merged(BASE, {"sinks": bodies, "routes": [{"name": "all", "sinks": list(bodies)}]})
    return problems(tmp_path, data)


@pytest.mark.parametrize("suffix", list(STATE_COMPANIONS))
def test_every_file_beside_the_database_is_refused(tmp_path: Path, suffix: str) -> None:
    db = tmp_path / "state" / "bridge.db"
    found = sinks(tmp_path, x=f"state/bridge.db{suffix}")
    assert found == [
        f"sinks.x.path: {db}{suffix} is {STATE_COMPANIONS[suffix]} (state.path {db}): a file "
        "sink must not write the store's files"
    ]


def test_a_name_the_store_gives_a_corrupt_database_is_refused(tmp_path: Path) -> None:
    # moved_aside() counts every such file as a corrupt database waiting for an operator.
    (problem,) = sinks(tmp_path, x="state/bridge.db.corrupt-events.jsonl")
    assert problem.startswith("sinks.x.path: ")
    assert "where the store moves a corrupt state database aside" in problem


def test_paths_are_compared_as_the_daemon_opens_them(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    found = sinks(
        tmp_path,
        a="real/x.jsonl",
        b="link/x.jsonl",  # the same file through a symbolic link
        c="state/../state/bridge.db",
    )
    assert [p.split(":")[0] for p in found] == ["sinks.b.path", "sinks.c.path"]
    assert "is also the path of sink a" in found[0]
    assert "is the state database" in found[1]


def test_rotated_copies_count_only_once_rotation_is_on(tmp_path: Path) -> None:
    rotating = {"path": "x.jsonl", "max_bytes": "1MiB", "backups": 2}
    found = sinks(tmp_path, a=rotating, b="x.jsonl.2")
    assert found == [
        f"sinks.b.path: {tmp_path / 'x.jsonl.2'} is where sink a's rotation moves its file: two "
        "sinks cannot write one file (their lines would interleave)"
    ]
    found = sinks(tmp_path, b="x.jsonl.2", a=rotating)
    assert found == [
        f"sinks.a.path: rotating {tmp_path / 'x.jsonl'} writes {tmp_path / 'x.jsonl.2'}, which "
        "is the path of sink b: two sinks cannot write one file (their lines would interleave)"
    ]
    # Without max_bytes nothing rotates: x.jsonl.2 is no one else's.
    sinks_ok = merged(
        BASE,
        {
            "sinks": {
                "a": {"type": "file", "path": "x.jsonl", "backups": 2},
                "b": {"type": "file", "path": "x.jsonl.2"},
            },
            "routes": [{"name": "all", "sinks": ["a", "b"]}],
        },
    )
    load_config(write(tmp_path / "ok.yaml", sinks_ok), sink_types=SINK_TYPES, env={})


def test_names_that_only_look_alike_are_accepted(tmp_path: Path) -> None:
    data = merged(
        BASE,
        {
            "sinks": {
                "a": {"type": "file", "path": "state/bridge.db.jsonl"},
                "b": {"type": "file", "path": "state/bridge.db-wal2"},
                "c": {"type": "file", "path": "state/other.db-wal"},
            },
            "routes": [{"name": "all", "sinks": ["a", "b", "c"]}],
        },
    )
    load_config(write(tmp_path / "ok.yaml", data), sink_types=SINK_TYPES, env={})


async def test_the_list_names_every_file_the_store_keeps_beside_the_database(
    tmp_path: Path,
) -> None:
    """If the store starts keeping another file beside the database, a sink could write it:
    this fails until ``STATE_COMPANIONS`` names it."""
    db = tmp_path / "bridge.db"
    store = await Store.open(db)
    try:
        log = DeliveredLog(db, "0123abcd")  # the files a worker's delivered ids go to
        assert log.write([1])
        kept = [name.removeprefix("bridge.db") for name in listing(tmp_path)]
        log.close()
    finally:
        await store.close()
    assert set(kept) - {""} <= set(STATE_COMPANIONS)
    assert {"-wal", ".lock", ".delivered-0"} <= set(kept)


def own_locks(path: Path) -> list[str]:
    """The POSIX locks this process holds on ``path``, as the kernel lists them."""
    inode, pid = os.stat(path).st_ino, os.getpid()
    with open("/proc/locks") as locks:
        # Each line without its leading ordinal, which moves as other processes' locks come and go.
        return [
            line.split(":", 1)[1].strip()
            for line in locks
            if f":{inode} " in line and f" {pid} " in line
        ]


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="the kernel lists no locks here")
async def test_a_running_bridge_reloads_without_touching_its_own_database(tmp_path: Path) -> None:
    # A reload checks state.path again. Opening and closing the database the bridge has open
    # would drop every POSIX lock this process holds on it, SQLite's included (the shared lock
    # that tells another process the database is in use): the check must leave it alone.
    path = write_config(tmp_path / "config.yaml", bridge_config_dict(tmp_path))
    async with running_bridge(load_config(path, sink_types=SINK_TYPES)) as sv:
        database = sv.config.state.path
        held = own_locks(database)
        assert held  # SQLite's, in WAL mode, while the store is open
        assert await sv.reload() is True
        assert own_locks(database) == held


def test_a_file_this_process_has_open_is_not_opened_again(tmp_path: Path) -> None:
    database = tmp_path / "bridge.db"
    database.write_bytes(b"not a database, but held open here")
    fd = os.open(database, os.O_RDONLY)
    try:
        assert open_here(os.stat(database))
        assert foreign_file(database) is None  # not looked at: it may be this process's store
    finally:
        os.close(fd)
    assert not open_here(os.stat(database))
    assert NOT_A_DATABASE in (foreign_file(database) or "")
