"""Where ``status`` (and ``tail``, ``trigger``, which find the bridge the same way) looks, and what
it says when that is wrong: a credential or a query in ``--admin`` is refused unshown, a server that
answers something else is not taken for no server, and a bridge still on the admin address it
started with is pointed at. Run as users run them: a subprocess."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port

from tests.test_cli import _log_lines, bridge, webhook_only, write
from tests.test_cli_operator import _started, status_from

COMMANDS = [("status",), ("tail",), ("trigger", "--sink", "audit")]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "given",
    ["http://user:PASSLEAK@127.0.0.1:9/", "user:PASSLEAK@127.0.0.1:9", "https://:PASSLEAK@[::1]"],
)
def test_a_credential_in_the_admin_url_is_refused_unshown(
    tmp_path: Path, command: tuple[str, ...], given: str
) -> None:
    result = bridge(tmp_path, *command, "--admin", given)
    assert result.returncode == 2, result.stderr
    assert "PASSLEAK" not in result.stderr + result.stdout
    assert "user name or password" in result.stderr
    assert "--token" in result.stderr
    assert "$OPENMAIL_BRIDGE_ADMIN_TOKEN" in result.stderr
    assert "no bridge answers" not in result.stderr


def test_an_at_sign_in_the_admin_urls_path_is_no_credential(tmp_path: Path) -> None:
    # A reverse proxy's path may hold one: only the address part can carry a user name.
    result = bridge(tmp_path, "status", "--admin", "http://127.0.0.1:9/@proxy")
    assert result.returncode == 1, result.stderr  # asked, and nobody answers on port 9
    assert "user name or password" not in result.stderr
    assert "no bridge answers" in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("tail", ["/?token=QUERYLEAK", "?token=QUERYLEAK", "/#QUERYLEAK"])
def test_a_query_in_the_admin_url_is_refused_unshown(
    tmp_path: Path, command: tuple[str, ...], tail: str
) -> None:
    result = bridge(tmp_path, *command, "--admin", f"http://127.0.0.1:9{tail}")
    assert result.returncode == 2, result.stderr
    assert "QUERYLEAK" not in result.stderr + result.stdout
    assert "--admin http://127.0.0.1:9: " in result.stderr
    assert "query" in result.stderr
    assert "--token" in result.stderr


async def test_a_server_that_answers_no_json_is_not_taken_for_no_server(tmp_path: Path) -> None:
    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html>a console page</html>", content_type="text/html")

    port, result = await status_from(tmp_path, page)
    assert result.returncode == 1
    assert f"the server at 127.0.0.1:{port} answered something other than a report" in (
        result.stderr
    )
    assert "no bridge answers" not in result.stderr


def test_a_bridge_keeps_its_admin_address_until_restarted_and_status_says_so(
    tmp_path: Path,
) -> None:
    """A reload that moves admin.listen is left for a restart: the config then names an address
    nobody listens on, and ``status`` says how to reach the bridge where it is."""
    old = free_port()
    config = tmp_path / "config.yaml"
    write(config, webhook_only(tmp_path, admin={"listen": f"127.0.0.1:{old}"}))
    # The new address: bound and never listening, so that a connection is refused and no other
    # test can take the port meanwhile.
    with socket.socket() as closed, _started(tmp_path, "run", "-c", str(config)) as proc:
        closed.bind(("127.0.0.1", 0))
        new = closed.getsockname()[1]
        write(config, webhook_only(tmp_path, admin={"listen": f"127.0.0.1:{new}"}))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not any(
            e.get("event") == "config.restart_needed" for e in _log_lines(tmp_path / "stderr.log")
        ):
            assert time.monotonic() < deadline, (tmp_path / "stderr.log").read_text()
            time.sleep(0.05)

        result = bridge(tmp_path, "status")
        assert result.returncode == 1
        assert f"no bridge answers at 127.0.0.1:{new}" in result.stderr
        assert "keeps the admin address it started with until it is restarted" in result.stderr
        assert "--admin" in result.stderr

        where = bridge(tmp_path, "status", "--admin", f"127.0.0.1:{old}")
        assert where.returncode == 0, where.stderr
        assert "RESTART NEEDED for admin" in where.stdout

        # Given by --admin, the address is the operator's own: no word about the config.
        given = bridge(tmp_path, "status", "--admin", f"127.0.0.1:{new}")
        assert given.returncode == 1
        assert "no bridge answers" in given.stderr
        assert "restarted" not in given.stderr
