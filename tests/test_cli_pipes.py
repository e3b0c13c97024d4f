"""A command whose output's reader goes away (``| head``, a pager quit early) ends quietly with
exit 141, as ``cat`` or ``grep`` killed by SIGPIPE would: no traceback, whatever the command.

Real subprocesses writing into real pipes. A pipe whose reading end is closed before the command
starts makes the very first write fail, with nothing to synchronise; ``events list | head -1`` is
also reproduced as the operator ran it, reading one line and closing the pipe.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_config, running_bridge

from bridge.events import Event, Origin
from bridge.store import Store
from tests.test_cli import cli_env, webhook_only, write

EXIT_BROKEN_PIPE = 141
EVENTS = 1000
"""History rows for ``events list --limit 1000``: about 200 KB of lines, more than a pipe holds,
so the writer is still writing when the reader closes."""


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The writing end of a pipe nobody reads any more."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


def run_into(
    cwd: Path, stdout: int, *args: str, stderr: int = subprocess.PIPE
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], cwd=cwd, env=cli_env(HOME=str(cwd)),
        stdout=stdout, stderr=stderr, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
async def history(tmp_path: Path) -> Path:
    """A state database of EVENTS delivered events, each line of ``events list`` about 200
    bytes long."""
    db = tmp_path / "bridge.db"
    store = await Store.open(db)
    try:
        for n in range(EVENTS):
            event_id = f"evt_{n:04d}_" + "x" * 120
            raw = json.dumps({"event": "message.received", "event_id": event_id}).encode()
            event = Event(
                event_id=event_id, type="message.received", inbox_id=f"inbox-{n}",
                thread_id=None, sender=None, recipient=None, origin=Origin.WEBHOOK,
                received_at=1_800_000_000.0 + n, raw=raw,
            )  # fmt: skip
            rows = (await store.accept(event, ["agent"])).deliveries
            await store.mark_delivered_many([row.id for row in rows])
    finally:
        await store.close()
    return db


def test_events_list_piped_to_head_ends_quietly(tmp_path: Path, history: Path) -> None:
    """The report's ``events list | head -1``: one line read, then the pipe closed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge", "events", "list", "--limit", "1000", "--state",
         str(history)],
        cwd=tmp_path, env=cli_env(HOME=str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what head does after its line
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == EXIT_BROKEN_PIPE, err
    assert b"\tmessage.received\tinbox-" in first
    assert err == ""


@pytest.mark.parametrize(
    "args",
    [
        ("events", "list", "--limit", "1000", "--state", "{db}"),
        ("events", "list", "--limit", "3", "--state", "{db}"),  # short: cut at the last flush
        ("dlq", "list", "--state", "{db}"),
        ("check", "-c", "{config}"),
        ("completion", "bash"),
        ("--help",),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_every_command_ends_quietly_into_a_closed_pipe(
    tmp_path: Path, closed_pipe: int, history: Path, args: tuple[str, ...]
) -> None:
    config = write(tmp_path / "config.yaml", webhook_only(tmp_path))
    given = [arg.format(db=history, config=config) for arg in args]
    result = run_into(tmp_path, closed_pipe, *given)
    assert result.returncode == EXIT_BROKEN_PIPE, result.stderr
    assert_quiet(result.stderr)


def assert_quiet(stderr: str) -> None:
    """Nothing on stderr about the pipe: what a command says there anyway (check's "valid") may
    stay."""
    for noise in ("Traceback", "BrokenPipeError", "Broken pipe", "Exception ignored"):
        assert noise not in stderr, stderr


async def test_status_into_a_closed_pipe(tmp_path: Path, closed_pipe: int) -> None:
    config = make_config(tmp_path, None)
    async with running_bridge(config) as sv:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "status", "--admin", f"127.0.0.1:{sv.admin.port}",
            cwd=tmp_path, env=cli_env(HOME=str(tmp_path)),
            stdout=closed_pipe, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EXIT_BROKEN_PIPE, err.decode()
    assert_quiet(err.decode())


def test_a_closed_stderr_ends_quietly_too(tmp_path: Path, closed_pipe: int) -> None:
    """``check ... 2>&1 >/dev/null | head``: the refusal goes to stderr, whose reader is gone."""
    result = run_into(tmp_path, subprocess.DEVNULL, "check", "-c", "nope.yaml", stderr=closed_pipe)
    assert result.returncode == EXIT_BROKEN_PIPE
