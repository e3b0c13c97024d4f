"""Without admin.token, the private paths answer the bridge's own user and root only: loopback is
shared by every user of the host. The kernel's socket table says who is on the other end."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_config, running_bridge

from bridge.console.peer import UNKNOWABLE, is_own, peer_uid, proc_address


@pytest.fixture
def connection(request: pytest.FixtureRequest) -> Iterator[tuple[socket.socket, socket.socket]]:
    family, host = request.param
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen()
    client = socket.socket(family)
    client.connect(server.getsockname()[:2])
    accepted, _ = server.accept()
    try:
        yield client, accepted
    finally:
        for s in (client, accepted, server):
            s.close()


@pytest.mark.parametrize(
    "connection", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], indirect=True
)
def test_the_peer_of_a_loopback_connection_is_found_with_its_user(
    connection: tuple[socket.socket, socket.socket],
) -> None:
    _, accepted = connection
    peer, local = accepted.getpeername()[:2], accepted.getsockname()[:2]
    assert peer_uid(peer, local) == os.getuid()
    assert peer_uid(local, peer) == os.getuid()  # the server's own socket, seen the other way
    assert peer_uid((peer[0], 1), local) is None  # no such socket


def test_the_socket_table_format(tmp_path: Path) -> None:
    assert proc_address("127.0.0.1", 8080) == "0100007F:1F90"
    assert proc_address("::1", 443) == "00000000000000000000000001000000:01BB"
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
        "   0: 0100007F:D431 0100007F:24F8 01 00000000:00000000 00:00000000 00000000  1234 "
        "0 42 1\n"
        # A socket its process closed (FIN_WAIT2): listed with uid 0, whoever sent the request.
        "   1: 0100007F:D432 0100007F:24F8 05 00000000:00000000 00:00000000 00000000     0 "
        "0 0 1\n"
    )
    (tmp_path / "tcp").write_text(table)
    assert peer_uid(("127.0.0.1", 0xD431), ("127.0.0.1", 0x24F8), tmp_path) == 1234
    assert peer_uid(("::ffff:127.0.0.1", 0xD431), ("::ffff:127.0.0.1", 0x24F8), tmp_path) == 1234
    assert peer_uid(("127.0.0.1", 0xD432), ("127.0.0.1", 0x24F8), tmp_path) is None
    assert peer_uid(("::1", 1), ("::1", 2), tmp_path) is None  # no tcp6 table: not listed
    # On Linux a missing table trusts no one; elsewhere the user cannot be known.
    missing = peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2), tmp_path / "none")
    assert missing == (None if sys.platform == "linux" else UNKNOWABLE)
    assert is_own(os.getuid())
    assert is_own(0)
    assert is_own(UNKNOWABLE)
    assert not is_own(None)
    assert not is_own(os.getuid() + 12345 if os.getuid() else 65534)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="a second local user's client needs root and setpriv to run as that user",
)
async def test_another_local_user_is_refused_the_private_paths_without_a_token(
    tmp_path: Path,
) -> None:
    async with running_bridge(make_config(tmp_path)) as sv:
        assert sv.admin is not None
        base = f"http://127.0.0.1:{sv.admin.port}"
        script = (
            "import sys, urllib.request, urllib.error\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n"
            "        print(urllib.request.urlopen(path).status)\n"
            "    except urllib.error.HTTPError as exc:\n"
            "        print(exc.code)\n"
        )
        # The console itself (there is no login form without a token) and its live stream are
        # private too; its static files and the probes are not.
        private = ("/status", "/api/events", "/", "/login", "/api/stream")
        paths = [base + p for p in (*private, "/static/console.css", "/healthz")]
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = await asyncio.create_subprocess_exec(
            *nobody, sys.executable, "-c", "pass", stderr=asyncio.subprocess.DEVNULL
        )
        if await probe.wait() != 0:
            pytest.skip("user nobody cannot run this Python (its directories are closed)")
        other = await answers([*nobody, sys.executable, "-c", script, *paths])
        own = await answers([sys.executable, "-c", script, *paths])
    assert other == ["403"] * len(private) + ["200", "200"]
    assert own[:3] == ["200", "200", "200"]
    assert own[-2:] == ["200", "200"]


async def answers(command: list[str]) -> list[str]:
    """The statuses a client process printed (run beside the bridge's event loop)."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().split()
