"""sd_notify: the Notifier against real datagram sockets, and a real ``openmail-bridge run`` that
tells a test NOTIFY_SOCKET READY=1 (only once its listeners answer), STATUS=, WATCHDOG=1 and
STOPPING=1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import bridge_config_dict, free_port, start_bridge_process, wait_until, write_config

from bridge.simulator import Simulator
from bridge.systemd import Notifier


def watchdog_tasks() -> list[asyncio.Task[Any]]:
    """The Notifier's running beat (its task is named ``systemd:watchdog``)."""
    return [t for t in asyncio.all_tasks() if t.get_name() == "systemd:watchdog"]


@pytest.fixture
def socket_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory short enough for a Unix socket path (108 bytes at most)."""
    if len(str(tmp_path / "notify.sock")) < 100:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(prefix="sd-") as short:
        yield Path(short)


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; records (monotonic time, fields)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[dict[str, str]]:
        with contextlib.suppress(BlockingIOError):
            while True:
                data = self.sock.recv(4096)
                fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                self.messages.append((time.monotonic(), fields))
        return [fields for _, fields in self.messages]

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        self.drain()
        return [(at, fields) for at, fields in self.messages if key in fields]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(socket_dir: Path) -> Iterator[tuple[str, NotifySocket]]:
    path = str(socket_dir / "notify.sock")
    listener = NotifySocket(path)
    try:
        yield path, listener
    finally:
        listener.close()


# --- the Notifier ---------------------------------------------------------------------------------


def test_sends_key_value_lines_to_a_path_socket(notify_socket: tuple[str, NotifySocket]) -> None:
    path, listener = notify_socket
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("ready: websocket subscribed")
    notifier.status("degraded: websocket down")
    notifier.stopping()
    assert listener.drain() == [
        {"READY": "1", "STATUS": "ready: websocket subscribed"},
        {"STATUS": "degraded: websocket down"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_abstract_namespace_address() -> None:
    name = f"openmail-bridge-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # what systemd means by NOTIFY_SOCKET=@name
        sock.settimeout(2)
        Notifier(env={"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


async def test_no_op_without_notify_socket() -> None:
    notifier = Notifier(env={"WATCHDOG_USEC": "400000"})
    assert not notifier.enabled
    with structlog.testing.capture_logs() as logs:
        notifier.ready("ready")
        notifier.notify(WATCHDOG="1")
        notifier.stopping()
        notifier.start_watchdog()
        assert notifier._task is None
        await notifier.stop_watchdog()
    assert logs == []


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    own = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env=own).watchdog_interval == pytest.approx(0.2)
    assert (
        Notifier(env={"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval
        == 15
    )
    assert Notifier(env={"NOTIFY_SOCKET": "/run/x"}).watchdog_interval is None
    assert Notifier(env={"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "0"}).watchdog_interval is None
    assert (
        Notifier(env={"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"}).watchdog_interval is None
    )


async def test_watchdog_pid_of_another_process_disables_the_watchdog(
    notify_socket: tuple[str, NotifySocket],
) -> None:
    # systemd sets WATCHDOG_PID for the main process; a child that inherited it must not ping.
    path, listener = notify_socket
    notifier = Notifier(
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid() + 1)}
    )
    assert notifier.watchdog_interval is None
    notifier.start_watchdog()
    assert watchdog_tasks() == []  # no beat at all, so no ping can come later
    await notifier.stop_watchdog()
    assert listener.with_key("WATCHDOG") == []


async def test_watchdog_pings_from_the_event_loop_until_stopped(
    notify_socket: tuple[str, NotifySocket],
) -> None:
    path, listener = notify_socket
    notifier = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})  # every 20 ms
    notifier.start_watchdog()
    await wait_until(lambda: len(listener.with_key("WATCHDOG")) >= 4, timeout=5)
    assert watchdog_tasks()
    await notifier.stop_watchdog()
    assert watchdog_tasks() == []  # stopped, not merely between two pings


async def test_status_is_resent_only_when_it_changes(
    notify_socket: tuple[str, NotifySocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bridge.systemd.STATUS_INTERVAL", 0.01)
    path, listener = notify_socket
    notifier = Notifier(env={"NOTIFY_SOCKET": path})  # no watchdog: STATUS= only
    state = ["degraded: websocket connecting"]
    beats = 0

    def status() -> str:
        nonlocal beats
        beats += 1
        return state[0]

    notifier.ready(state[0])
    notifier.start_watchdog(status)
    await wait_until(lambda: beats >= 3)  # beats with the state unchanged since READY=1
    state[0] = "ready: websocket subscribed"
    await wait_until(lambda: len(listener.drain()) == 2)
    seen = beats
    await wait_until(lambda: beats >= seen + 3)  # more beats, the state unchanged again
    await notifier.stop_watchdog()
    assert listener.drain() == [
        {"READY": "1", "STATUS": "degraded: websocket connecting"},
        {"STATUS": "ready: websocket subscribed"},
    ]


def test_an_unreachable_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with structlog.testing.capture_logs() as logs:
        notifier.ready("ready")
        for _ in range(3):  # as a watchdog beats: logged once a minute at most
            notifier.notify(WATCHDOG="1")
    assert [entry["event"] for entry in logs] == ["systemd.notify_failed"]


# --- a real bridge process ------------------------------------------------------------------------


def connects(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def notified_bridge(
    tmp_path: Path, sim: Simulator, notify: str, bridge_processes: list[Any]
) -> AsyncIterator[tuple[Any, int]]:
    webhook_port = free_port()
    data = bridge_config_dict(
        tmp_path,
        sim,
        admin={"listen": f"127.0.0.1:{free_port()}"},
        openmail={"webhook": {"listen": f"127.0.0.1:{webhook_port}"}},
    )
    path = write_config(tmp_path / "bridge.yaml", data)
    bridge = start_bridge_process(path, env={"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "400000"})
    bridge_processes.append(bridge)
    yield bridge, webhook_port


async def test_bridge_process_speaks_sd_notify(
    sim: Simulator,
    tmp_path: Path,
    notify_socket: tuple[str, NotifySocket],
    bridge_processes: list[Any],
) -> None:
    path, listener = notify_socket
    async with notified_bridge(tmp_path, sim, path, bridge_processes) as (bridge, webhook_port):
        deadline = time.monotonic() + 15
        ready: dict[str, str] | None = None
        while ready is None:
            assert time.monotonic() < deadline, "no READY=1 within 15 s"
            assert bridge.proc.poll() is None, bridge.stderr_path.read_text()
            found = [fields for _, fields in listener.with_key("READY")]
            if found:
                ready = found[0]
                # Checked the moment READY=1 is seen: the listeners were bound before it was sent.
                assert connects(webhook_port)
            else:
                await asyncio.sleep(0.005)
        assert ready["READY"] == "1"
        assert ready["STATUS"].split(":")[0] in ("ready", "degraded")
        assert "webhook listening" in ready["STATUS"]
        assert "store writable" in ready["STATUS"]

        # WATCHDOG=1 at half of WATCHDOG_USEC (0.4 s): about every 0.2 s.
        await wait_until(lambda: len(listener.with_key("WATCHDOG")) >= 6, timeout=10)
        times = [at for at, _ in listener.with_key("WATCHDOG")]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert 0.1 < sum(gaps) / len(gaps) < 0.35, gaps
        assert max(gaps) < 0.4, gaps  # never late enough for systemd to kill it

        # STATUS= follows the state: the WebSocket subscribes after READY, and later goes down.
        await wait_until(
            lambda: any(f["STATUS"].startswith("ready:") for _, f in listener.with_key("STATUS"))
        )
        sim.refuse(30, mode="http", code=503)
        await sim.disconnect(1001)
        await wait_until(
            lambda: listener.with_key("STATUS")[-1][1]["STATUS"].startswith("degraded:")
        )

        bridge.signal(signal.SIGTERM)
        code = await asyncio.to_thread(bridge.wait)
        assert code == 0
        stopping = listener.with_key("STOPPING")
        assert stopping
        assert stopping[0][1] == {"STOPPING": "1", "STATUS": "stopping"}
        after = [fields for _, fields in listener.messages[listener.messages.index(stopping[0]) :]]
        assert not any("READY" in fields for fields in after)
        assert all("stopping" in fields["STATUS"] for fields in after if "STATUS" in fields)
