"""``openmail-bridge tail``, run as users run it: a real subprocess following a real bridge (fed by
the OpenMail simulator over its WebSocket) through the admin server's ``/api/stream``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    bridge_config_dict,
    free_port,
    run_cli,
    running_bridge,
    wait_until,
    websocket_of,
    write_config,
)

from bridge.cli.tail import SseParser, human
from bridge.config import Config, build_config
from bridge.simulator import Simulator
from bridge.sinks import SINK_TYPES
from bridge.supervisor import Supervisor

TOKEN_ENV = "OPENMAIL_BRIDGE_ADMIN_TOKEN"
ROUTE_ALL = [{"name": "all", "sinks": ["audit"]}]
FIELDS = ["ts", "kind", "event_id", "source", "inbox_id", "type", "sink", "attempt", "error"]
WAIT = 20.0


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The command falls back on this variable; a value from the developer's shell must not leak in.
    monkeypatch.delenv(TOKEN_ENV, raising=False)


def config_of(tmp_path: Path, sim: Simulator, **admin: str) -> tuple[Config, Path]:
    """A bridge on the simulator, every event routed to a file sink, the admin server on a fixed
    port so the config file alone reaches it (across restarts too)."""
    data = bridge_config_dict(
        tmp_path, sim, routes=ROUTE_ALL, admin={"listen": f"127.0.0.1:{free_port()}", **admin}
    )
    path = write_config(tmp_path / "config.yaml", data)
    env = {"TAIL_TEST_TOKEN": "admin-token-tail-0006"}
    return build_config(data, sink_types=SINK_TYPES, base_dir=tmp_path, env=env), path


@pytest.fixture
async def bridge(sim: Simulator, tmp_path: Path) -> AsyncIterator[tuple[Supervisor, Path]]:
    config, path = config_of(tmp_path, sim)
    async with running_bridge(config) as sv:
        await wait_until(lambda: websocket_of(sv).receiving)
        yield sv, path


class Tail:
    """A running ``tail`` subprocess: its stdout lines and its stderr notes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.notes: list[str] = []

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT)
        assert raw, f"tail's stdout ended; stderr: {self.notes}"
        return raw.decode().rstrip("\n")

    async def records(self, count: int) -> list[dict[str, Any]]:
        return [json.loads(await self.line()) for _ in range(count)]

    async def note(self, text: str) -> str:
        """Read stderr until a line holds ``text``."""
        assert self.proc.stderr is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stderr.readline(), WAIT)
            assert raw, f"tail's stderr ended before {text!r}; it said: {self.notes}"
            self.notes.append(raw.decode().rstrip("\n"))
            if text in self.notes[-1]:
                return self.notes[-1]

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit status and the rest of stderr."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.stderr is not None
        rest = await asyncio.wait_for(self.proc.stderr.read(), WAIT)
        return await asyncio.wait_for(self.proc.wait(), WAIT), rest.decode()


@contextlib.asynccontextmanager
async def tailing(
    *args: str, stdout: int = asyncio.subprocess.PIPE, **env: str
) -> AsyncIterator[Tail]:
    """``openmail-bridge tail ARGS`` until the block ends; it has connected when this yields."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "tail", *args,
        stdout=stdout, stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
    )  # fmt: skip
    tail = Tail(proc)
    try:
        await tail.note("following ")
        yield tail
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def by_event(records: list[dict[str, Any]]) -> dict[str, list[tuple[str, str | None]]]:
    found: dict[str, list[tuple[str, str | None]]] = {}
    for record in records:
        found.setdefault(record["event_id"], []).append((record["kind"], record["sink"]))
    return found


# --- following a bridge ------------------------------------------------------------------------


async def test_tail_json_prints_accepted_then_delivered_and_stops_on_ctrl_c(
    bridge: tuple[Supervisor, Path], sim: Simulator
) -> None:
    sv, path = bridge
    async with tailing("-c", str(path), "--json") as tail:
        assert sv.activity.subscribers == 1
        sent = [await sim.inject() for _ in range(3)]
        records = await tail.records(6)
        code, rest = await tail.interrupt()
    assert by_event(records) == {e: [("accepted", None), ("delivered", "audit")] for e in sent}
    for record in records:
        assert list(record) == FIELDS  # exactly the contract's fields, for jq
        assert record["source"] == "websocket"
        assert record["type"] == "message.received"
        assert record["attempt"] == (1 if record["kind"] == "delivered" else None)
    assert code == 0
    assert "Traceback" not in rest
    assert "KeyboardInterrupt" not in rest


async def test_tail_filters(bridge: tuple[Supervisor, Path], sim: Simulator) -> None:
    sv, path = bridge
    assert sv.admin is not None
    config = ("-c", str(path), "--json")
    async with (
        tailing(*config, "--inbox", "inb_demo_sales", "--type", "message.received") as by_inbox,
        tailing(*config, "--sink", "audit") as by_sink,
        tailing(*config, "--source", "test") as by_source,
    ):
        support = await sim.inject(inbox_id="inb_demo_support")
        sales = await sim.inject(inbox_id="inb_demo_sales")
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{sv.admin.port}/trigger", json={"sink": "audit"}) as sent,
        ):
            assert sent.status == 202
            test_event = (await sent.json())["event_id"]
        inbox_records = await by_inbox.records(2)
        sink_records = await by_sink.records(3)
        source_records = await by_source.records(2)
    assert by_event(inbox_records) == {sales: [("accepted", None), ("delivered", "audit")]}
    # Lanes (threads) deliver in parallel: the order between events is not fixed.
    assert sorted((r["kind"], r["event_id"]) for r in sink_records) == sorted(
        ("delivered", e) for e in (support, sales, test_event)
    )
    # The test event's delivery names the source it was accepted from, not OpenMail's origin.
    assert [(r["kind"], r["event_id"], r["source"]) for r in source_records] == [
        ("accepted", test_event, "test"),
        ("delivered", test_event, "test"),
    ]


async def test_tail_prints_plain_lines_when_not_on_a_terminal(
    bridge: tuple[Supervisor, Path], sim: Simulator
) -> None:
    _, path = bridge
    async with tailing("-c", str(path), "--inbox", "inb_demo_sales") as tail:
        event_id = await sim.inject(inbox_id="inb_demo_sales")
        accepted, delivered = await tail.line(), await tail.line()
    assert "\x1b" not in accepted + delivered
    assert accepted.split()[1:] == [
        "accepted", event_id, "websocket", "inb_demo_sales", "message.received"
    ]  # fmt: skip
    assert delivered.split()[1:] == [
        "delivered", event_id, "websocket", "inb_demo_sales", "message.received", "sink=audit",
        "attempt=1",
    ]  # fmt: skip


async def test_tail_colors_a_terminal_unless_no_color(
    bridge: tuple[Supervisor, Path], sim: Simulator
) -> None:
    _, path = bridge
    for env, colored in (({}, True), ({"NO_COLOR": "1"}, False)):
        master, terminal = os.openpty()
        try:
            async with tailing("-c", str(path), stdout=terminal, **env):
                os.close(terminal)
                event_id = await sim.inject()
                shown = await read_terminal(master, f"delivered\x1b[0m {event_id}" if colored
                                            else f"delivered {event_id}")  # fmt: skip
        finally:
            os.close(master)
        assert ("\x1b[" in shown) is colored, shown


async def read_terminal(master: int, until: str) -> str:
    """What a terminal shows until ``until`` appears (read off the pseudo-terminal's master)."""
    loop = asyncio.get_running_loop()
    shown = ""
    async with asyncio.timeout(WAIT):
        while until not in shown:
            chunk = await loop.run_in_executor(None, os.read, master, 4096)
            assert chunk, shown
            shown += chunk.decode(errors="replace")
    return shown


async def test_tail_says_when_the_bridge_restarts_and_reconnects(
    sim: Simulator, tmp_path: Path
) -> None:
    config, path = config_of(tmp_path, sim)
    first = Supervisor(config)
    await first.start()
    try:
        async with tailing("-c", str(path), "--json") as tail:
            await first.stop()
            gone = await tail.note("went away")
            assert f"the bridge at {config.admin.listen.host}:{config.admin.listen.port}" in gone
            async with running_bridge(config) as second:
                await wait_until(lambda: websocket_of(second).receiving)
                await tail.note("reconnected to")
                event_id = await sim.inject()
                records = await tail.records(2)
            assert by_event(records) == {event_id: [("accepted", None), ("delivered", "audit")]}
            code, _ = await tail.interrupt()
            assert code == 0
    finally:
        await first.stop()


# --- refusals ----------------------------------------------------------------------------------


async def test_tail_exits_1_naming_the_address_when_no_bridge_answers(
    sim: Simulator, tmp_path: Path
) -> None:
    config, path = config_of(tmp_path, sim)  # no bridge started
    address = f"{config.admin.listen.host}:{config.admin.listen.port}"
    code, out, err = await run_cli("tail", "-c", str(path))
    assert code == 1
    assert f"no bridge answers at {address}" in err
    assert out == ""
    code, _, err = await run_cli("tail", "--admin", address)
    assert code == 1
    assert f"no bridge answers at {address}" in err


async def test_tail_without_the_token_exits_2_saying_so(sim: Simulator, tmp_path: Path) -> None:
    config, path = config_of(tmp_path, sim, token="${TAIL_TEST_TOKEN}")
    async with running_bridge(config):
        code, out, err = await run_cli("tail", "-c", str(path))
        assert code == 2
        assert "TAIL_TEST_TOKEN" in err  # the config's token cannot be read here: which variable
        code, _, err = await run_cli("tail", "-c", str(path), "--token", "wrong-token-0007")
        assert code == 2
        assert "refused the admin token (401)" in err
        assert "admin-token-tail-0006" not in out + err
        async with tailing("-c", str(path), "--json", TAIL_TEST_TOKEN="admin-token-tail-0006"):
            pass  # with the token it follows


# --- its parts ---------------------------------------------------------------------------------


def test_the_sse_parser_reads_events_and_skips_comments() -> None:
    parser = SseParser()
    lines = [": stream open", "", "event: activity", 'data: {"a": 1}', "", ": keepalive", "",
             "event: lost", "data: {", "data: }", "", "data: plain", ""]  # fmt: skip
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert events == [("activity", '{"a": 1}'), ("lost", "{\n}"), ("message", "plain")]


def test_a_human_line_cannot_drive_the_terminal() -> None:
    record = {
        "ts": 1_771_927_500.25, "kind": "dead", "event_id": "evt_1", "source": "webhook",
        "inbox_id": None, "type": "message.received", "sink": "agent", "attempt": 3,
        "error": "HTTP 400: \x1b[2Jgotcha\x07",
    }  # fmt: skip
    line = human(record, color=False)
    assert "\x1b" not in line
    assert "\x07" not in line
    assert line.endswith("sink=agent attempt=3 error=HTTP 400: \\x1b[2Jgotcha\\x07")
    assert " - message.received " in line  # no inbox
    colored = human(record, color=True)
    assert colored.count("\x1b[") == 2  # the kind's color and its reset, nothing from the error


# --- filters the bridge cannot satisfy ---------------------------------------------------------


async def test_tail_with_a_sink_the_bridge_does_not_run_exits_2_naming_its_sinks(
    bridge: tuple[Supervisor, Path],
) -> None:
    # It used to say "following" and then show nothing, for good.
    _, path = bridge
    code, out, err = await run_cli("tail", "-c", str(path), "--sink", "nope")
    assert code == 2
    assert "has no sink named 'nope'; its sinks: audit" in err
    assert "following" not in err
    assert out == ""


async def test_tail_refuses_a_source_the_feed_never_names(bridge: tuple[Supervisor, Path]) -> None:
    sv, path = bridge
    code, out, err = await run_cli("tail", "-c", str(path), "--source", "bogus")
    assert code == 2
    assert "invalid choice: 'bogus'" in err
    assert "'websocket', 'webhook', 'nats', 'test'" in err
    assert out == ""
    assert sv.activity.subscribers == 0
