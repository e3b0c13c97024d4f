"""The operator commands (``status``, ``dlq``, ``route-test``) need only what they use: they read
the config leniently, take ``--admin`` / ``--state`` / ``--token`` directly, never create a state
database, and refuse an unknown sink or an unfiltered purge. Run as users run them: a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from conftest import free_port, make_config, running_bridge, wait_until, websocket_of

from bridge.events import Origin, parse_event
from bridge.store import Store
from tests.test_cli import (
    _dead_letters,
    _log_lines,
    _pending,
    bridge,
    cli_env,
    webhook_only,
    write,
)

TOKEN = "admin-operator-test-5f6e7d8c"
# The daemon's config as it is under systemd: every secret from the environment.
NEEDS_SECRETS = {
    "openmail": {
        "api_key": "${OPENMAIL_API_KEY}",
        "webhook": {"listen": "127.0.0.1:0", "secret": "${OPENMAIL_WEBHOOK_SECRET}"},
    },
    "sinks": {
        "agent": {"type": "http", "url": "http://127.0.0.1:3000/h", "secret": "${AGENT_SECRET}"},
        "audit": {"type": "file", "path": "audit.jsonl"},
    },
}


def _secret_config(tmp_path: Path, **extra: Any) -> Path:
    data = NEEDS_SECRETS | {"state": {"path": str(tmp_path / "state" / "bridge.db")}} | extra
    return write(tmp_path / "config.yaml", data)


# --- dlq ---------------------------------------------------------------------------------------


def test_dlq_needs_no_secret(tmp_path: Path) -> None:
    _secret_config(tmp_path)
    _dead_letters(tmp_path / "state" / "bridge.db", "evt_a")
    result = bridge(tmp_path, "dlq", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\t")[:2] == ["agent", "evt_a"]
    assert "AGENT_SECRET" not in result.stderr


def test_dlq_reads_a_config_broken_elsewhere(tmp_path: Path) -> None:
    _secret_config(tmp_path, shutdown_timeout="soon", nonsense={"x": 1})
    _dead_letters(tmp_path / "state" / "bridge.db", "evt_a")
    result = bridge(tmp_path, "dlq", "list", "--json")
    assert result.returncode == 0, result.stderr
    assert [i["event_id"] for i in json.loads(result.stdout)] == ["evt_a"]


def test_dlq_on_a_missing_state_path_creates_nothing(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", webhook_only(tmp_path, state=None))
    result = bridge(tmp_path, "dlq", "list")
    assert result.returncode == 2
    assert f"no state database at {tmp_path / 'state' / 'bridge.db'}" in result.stderr
    assert "/var/lib/openmail-bridge/bridge.db" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "state").exists(), "dlq must never create a database"


def test_dlq_state_flag_needs_no_config(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "bridge.db"
    _dead_letters(db, "evt_a", "evt_b")
    result = bridge(tmp_path, "dlq", "list", "--json", "--state", str(db))
    assert result.returncode == 0, result.stderr
    assert [i["event_id"] for i in json.loads(result.stdout)] == ["evt_a", "evt_b"]
    missing = bridge(tmp_path, "dlq", "list", "--state", str(tmp_path / "nope.db"))
    assert missing.returncode == 2
    assert f"no state database at {tmp_path / 'nope.db'} (from --state)" in missing.stderr
    assert not (tmp_path / "nope.db").exists()


def test_dlq_unknown_sink_lists_the_known_ones(tmp_path: Path) -> None:
    _secret_config(tmp_path)
    db = tmp_path / "state" / "bridge.db"
    _dead_letters(db, "evt_a")
    result = bridge(tmp_path, "dlq", "list", "--sink", "agnet")
    assert result.returncode == 2
    assert "no sink named 'agnet' (known sinks: agent, audit)" in result.stderr
    assert result.stdout == ""
    # Without a config, the sinks the database holds rows for are the known ones.
    result = bridge(tmp_path / "state", "dlq", "retry", "--state", str(db), "--sink", "nope")
    assert result.returncode == 2
    assert "known sinks: agent, audit" in result.stderr


def test_dlq_purge_without_a_filter_needs_all(tmp_path: Path) -> None:
    _secret_config(tmp_path)
    db = tmp_path / "state" / "bridge.db"
    _dead_letters(db, "evt_a", "evt_b")
    for extra in ((), ("--quarantine",)):
        result = bridge(tmp_path, "dlq", "purge", *extra)
        assert result.returncode == 2
        assert "add --all" in result.stderr
    assert len(json.loads(bridge(tmp_path, "dlq", "list", "--json").stdout)) == 2
    assert bridge(tmp_path, "dlq", "purge", "--all", "--sink", "agent").returncode == 2
    result = bridge(tmp_path, "dlq", "purge", "--all")
    assert (result.returncode, result.stdout.strip()) == (0, "2 purged")


def test_dlq_retry_leaves_the_dead_letters_of_a_sink_gone_from_the_config(tmp_path: Path) -> None:
    db = tmp_path / "state" / "bridge.db"
    _secret_config(tmp_path)
    _dead_letters(db, "evt_a", "evt_b")  # agent's, dead
    _secret_config(tmp_path, sinks={"audit": NEEDS_SECRETS["sinks"]["audit"]})  # agent removed
    for extra in ((), ("--event-id", "evt_a")):
        result = bridge(tmp_path, "dlq", "retry", *extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "0 redriven"
        assert "no longer in the config are left: agent" in result.stderr
    assert len(json.loads(bridge(tmp_path, "dlq", "list", "--json").stdout)) == 2
    # Given by --state alone, with no config to say which sinks run, retry takes every one.
    result = bridge(tmp_path / "state", "dlq", "retry", "--state", str(db))
    assert result.stdout.strip() == "2 redriven"


def test_dlq_purge_pending_is_refused_for_a_sink_still_in_the_config(tmp_path: Path) -> None:
    _secret_config(tmp_path)
    db = tmp_path / "state" / "bridge.db"
    _dead_letters(db, "evt_a")
    result = bridge(tmp_path, "dlq", "purge", "--sink", "agent", "--pending")
    assert result.returncode == 2
    assert "'agent' is still in the config" in result.stderr
    for extra in (("list", "--sink", "agent"), ("purge", "--all"), ("purge", "--event-id", "e")):
        result = bridge(tmp_path, "dlq", *extra, "--pending")
        assert result.returncode == 2, extra
        assert "--pending goes with" in result.stderr
    assert len(json.loads(bridge(tmp_path, "dlq", "list", "--json").stdout)) == 1


def _held(db: Path, sink: str, *event_ids: str) -> None:
    """Accept each event for ``sink`` alone: a pending row, never delivered."""

    async def go() -> None:
        store = await Store.open(db)
        try:
            for event_id in event_ids:
                raw = json.dumps({"event": "message.received", "event_id": event_id})
                await store.accept(parse_event(raw.encode(), Origin.WEBHOOK), [sink])
        finally:
            await store.close()

    asyncio.run(go())


def test_dlq_list_names_every_removed_sink_that_holds_pending_rows(tmp_path: Path) -> None:
    db = tmp_path / "state" / "bridge.db"
    _secret_config(tmp_path)
    _dead_letters(db, "evt_a", "evt_b")  # agent: 2 dead; audit: 2 pending
    _held(db, "agent", "evt_c")
    _secret_config(tmp_path, sinks={})  # both removed
    for extra in ((), ("--json",)):
        result = bridge(tmp_path, "dlq", "list", *extra)
        assert result.returncode == 0, result.stderr
        notes = [line for line in result.stderr.splitlines() if "not in the config" in line]
        assert len(notes) == 2, result.stderr
        assert "note: 'agent' is not in the config and holds 1 pending rows" in notes[0]
        assert "note: 'audit' is not in the config and holds 2 pending rows" in notes[1]
        assert "'dlq purge --sink audit --pending' deletes them" in notes[1]
    # A sink still in the config, or one without pending rows, is not mentioned.
    _secret_config(tmp_path, sinks={"audit": NEEDS_SECRETS["sinks"]["audit"]})
    result = bridge(tmp_path, "dlq", "list")
    assert "'agent' is not in the config and holds 1 pending rows" in result.stderr
    assert "audit" not in result.stderr


def test_dlq_purge_pending_says_what_it_deleted(tmp_path: Path) -> None:
    """--pending deletes the removed sink's pending rows as well as its dead letters: the count
    is both, and the output says how many of each."""
    db = tmp_path / "state" / "bridge.db"
    _secret_config(tmp_path)
    _dead_letters(db, "evt_a", "evt_b")
    _held(db, "agent", "evt_c", "evt_d", "evt_e")
    _secret_config(tmp_path, sinks={"audit": NEEDS_SECRETS["sinks"]["audit"]})  # agent removed
    result = bridge(tmp_path, "dlq", "purge", "--sink", "agent", "--pending", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"purged": 5, "dead": 2, "pending": 3}
    assert _pending(db, "agent") == []
    assert _pending(db, "audit") == ["evt_a", "evt_b"]
    _held(db, "agent", "evt_f")
    result = bridge(tmp_path, "dlq", "purge", "--sink", "agent", "--pending")
    assert (result.returncode, result.stdout.strip()) == (0, "1 purged (0 dead, 1 pending)")


@pytest.mark.parametrize(
    ("command", "instead"),
    [
        (("status",), "give --admin URL (and --token, or $OPENMAIL_BRIDGE_ADMIN_TOKEN)"),
        (("dlq", "list"), "give --state PATH"),
        (("events", "list"), "give --state PATH"),
    ],
)
def test_a_config_that_does_not_parse_says_how_to_look_without_it(
    tmp_path: Path, command: tuple[str, ...], instead: str
) -> None:
    (tmp_path / "config.yaml").write_text("state: {path: x\nadmin: [\n")
    result = bridge(tmp_path, *command)
    assert result.returncode == 2
    assert "not valid YAML at line 2" in result.stderr
    assert f"to look without the config, {instead}" in result.stderr
    assert result.stdout == ""


def test_a_named_config_that_does_not_parse_says_to_leave_it_out(
    tmp_path: Path,
) -> None:
    db = tmp_path / "state" / "bridge.db"
    _dead_letters(db, "evt_a")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sinks: [\n")
    result = bridge(tmp_path, "dlq", "list", "-c", str(broken), "--state", str(db))
    assert result.returncode == 2
    assert "to look without the config, leave out -c\n" in result.stderr
    result = bridge(tmp_path, "dlq", "list", "-c", str(broken))
    assert "to look without the config, give --state PATH and leave out -c\n" in result.stderr
    result = bridge(
        tmp_path, "dlq", "list", "--state", str(db), env={"OPENMAIL_BRIDGE_CONFIG": str(broken)}
    )
    assert result.returncode == 2
    assert "to look without the config, unset $OPENMAIL_BRIDGE_CONFIG\n" in result.stderr


# --- route-test --------------------------------------------------------------------------------


def test_route_test_needs_no_secret(tmp_path: Path) -> None:
    routes = [{"name": "support", "match": {"inbox_ids": ["inb_1"]}, "sinks": ["agent"]}]
    _secret_config(tmp_path, routes=routes)
    event = {"event_id": "evt_1", "event_type": "message.received", "inbox_id": "inb_1"}
    result = bridge(tmp_path, "route-test", "--json", "-", stdin=json.dumps(event))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["sinks"] == ["agent"]


def test_route_test_still_refuses_broken_routes(tmp_path: Path) -> None:
    _secret_config(tmp_path, routes=[{"name": "r", "sinks": ["nope"]}])
    result = bridge(tmp_path, "route-test", "-", stdin="{}")
    assert result.returncode == 2
    assert "routes[0] (r).sinks[0]: no sink named 'nope'" in result.stderr


# --- status ------------------------------------------------------------------------------------


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A bridge whose admin server wants a token, its config reading it from $ADMIN_TOKEN."""
    port = free_port()
    config = write(
        tmp_path / "config.yaml",
        webhook_only(tmp_path, admin={"listen": f"127.0.0.1:{port}", "token": "${ADMIN_TOKEN}"}),
    )
    with _started(tmp_path, "run", "-c", str(config), ADMIN_TOKEN=TOKEN):
        yield tmp_path, port


@contextlib.contextmanager
def _started(cwd: Path, *args: str, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m bridge ARGS`` until it has logged bridge.started; stopped with SIGTERM."""
    stderr_path = cwd / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", *args], cwd=cwd, env=cli_env(HOME=str(cwd), **env),
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "bridge.started" for e in _log_lines(stderr_path)):
            assert proc.poll() is None, stderr_path.read_text()
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.05)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_status_with_an_unset_token_variable_names_it(protected: tuple[Path, int]) -> None:
    tmp_path, _ = protected
    result = bridge(tmp_path, "status")
    assert result.returncode == 2
    assert "ADMIN_TOKEN" in result.stderr
    assert "wants its admin token" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_status_token_from_the_variable_flag_or_config(protected: tuple[Path, int]) -> None:
    tmp_path, _ = protected
    for env, args in (
        ({"OPENMAIL_BRIDGE_ADMIN_TOKEN": TOKEN}, ()),
        ({}, ("--token", TOKEN)),
        ({"ADMIN_TOKEN": TOKEN}, ()),
    ):
        result = bridge(tmp_path, "status", "--json", *args, env=env)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["state"] == "ready"
    wrong = bridge(tmp_path, "status", "--token", "not-the-token")
    assert wrong.returncode == 2
    assert "refused the admin token" in wrong.stderr


def test_status_admin_flag_needs_no_config(protected: tuple[Path, int], tmp_path: Path) -> None:
    _, port = protected
    elsewhere = tmp_path / "empty"
    elsewhere.mkdir()
    result = bridge(elsewhere, "status", "--admin", f"http://127.0.0.1:{port}", "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("state: ready")
    assert "audit (file): delivered 0, pending 0, dead 0" in result.stdout


def test_status_with_a_broken_config_on_disk(protected: tuple[Path, int]) -> None:
    """A rejected reload leaves a broken file behind: status still reads admin.*."""
    tmp_path, _ = protected
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    data["sinks"]["audit"]["pth"] = "typo.jsonl"
    data["openmail"]["webhook"]["secret"] = "${UNSET_SECRET}"
    write(tmp_path / "config.yaml", data)
    result = bridge(tmp_path, "status", env={"ADMIN_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert "state: ready" in result.stdout


async def test_status_says_so_when_the_bridge_answers_403(tmp_path: Path) -> None:
    async def forbidden(_: web.Request) -> web.Response:
        return web.json_response({"error": "this path is disabled"}, status=403)

    _, proc = await status_from(tmp_path, forbidden)
    assert proc.returncode == 2
    assert "403" in proc.stderr
    assert "this path is disabled" in proc.stderr
    assert "no bridge answers" not in proc.stderr


async def status_from(
    cwd: Path, page: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``status --admin`` run against a loopback server answering ``/status`` with ``page``:
    the server's port, and what the CLI did."""
    app = web.Application()
    app.router.add_get("/status", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        return port, await _run_cli(cwd, "status", "--admin", f"127.0.0.1:{port}")
    finally:
        await runner.cleanup()


async def _run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a subprocess while this test's event loop keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, cwd=cwd, env=cli_env(HOME=str(cwd)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


async def test_status_shows_the_websocket_state_once_with_its_reason(tmp_path: Path) -> None:
    """The WebSocket is one of the parts: one line for it, saying why it is down."""
    nobody_there = f"ws://127.0.0.1:{free_port()}/v1/ws"
    config = make_config(tmp_path, None, openmail={"websocket": {"enabled": True,
                                                                 "url": nobody_there}})  # fmt: skip
    async with running_bridge(config) as sv:
        await wait_until(lambda: bool(websocket_of(sv).status()["reason"]))
        result = await _run_cli(tmp_path, "status", "--admin", f"127.0.0.1:{sv.admin.port}")
    assert result.returncode == 0, result.stderr
    shown = [line for line in result.stdout.splitlines() if "websocket" in line]
    assert len(shown) == 1, result.stdout
    assert re.fullmatch(r"  websocket: [a-z ]+ \(.+\)", shown[0]), shown


def test_status_watch_repeats_until_interrupted(protected: tuple[Path, int]) -> None:
    tmp_path, _ = protected
    with subprocess.Popen(
        [sys.executable, "-m", "bridge", "status", "--watch", "0.2"],
        cwd=tmp_path, env=cli_env(HOME=str(tmp_path), ADMIN_TOKEN=TOKEN),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    ) as proc:  # fmt: skip
        try:
            assert proc.stdout is not None
            frames = 0
            deadline = time.monotonic() + 30
            while frames < 2 and time.monotonic() < deadline:
                frames += proc.stdout.readline().startswith("state: ready")
            assert frames == 2
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


# --- the global log level ----------------------------------------------------------------------


def test_global_log_level_before_the_subcommand(tmp_path: Path) -> None:
    """``--log-level`` before ``run`` wins over the config's log.level (here warning, which
    would hide bridge.started)."""
    data = webhook_only(tmp_path, log={"level": "warning", "format": "json"})
    config = write(tmp_path / "config.yaml", data)
    with _started(tmp_path, "--log-level", "info", "run", "-c", str(config)):
        pass  # started: bridge.started, an info line, was logged
    db = tmp_path / "state" / "bridge.db"
    for flags in (("-v",), ("-vv",)):
        result = bridge(tmp_path, *flags, "dlq", "list", "--state", str(db))
        assert result.returncode == 0, result.stderr
    assert bridge(tmp_path, "--log-level", "loud", "dlq", "list").returncode == 2
