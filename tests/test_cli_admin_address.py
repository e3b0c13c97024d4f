"""``status``, ``tail`` and ``trigger`` pointed at the wrong place: an empty ``--admin`` is refused
(it used to fall back on ./config.yaml unsaid), and a server that is not an openmail-bridge admin
server (the bridge's own webhook listener, another program) is named as such, told apart from an
older bridge by its ``/healthz``. Run as users run them: subprocesses, real servers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port, make_config, running_bridge, webhook_of

from tests.test_cli import bridge, webhook_only, write
from tests.test_cli_operator import _run_cli

COMMANDS = [("status",), ("tail",), ("trigger", "--sink", "audit")]
NOT_ADMIN = "it is not an openmail-bridge admin server"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_empty_admin_url_is_refused_not_taken_for_the_configs(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    # A config in the working directory, whose admin address nothing listens on.
    port = free_port()
    write(tmp_path / "config.yaml", webhook_only(tmp_path, admin={"listen": f"127.0.0.1:{port}"}))
    result = bridge(tmp_path, *command, "--admin", "")
    assert result.returncode == 2, result.stderr
    assert "--admin is empty" in result.stderr
    assert "no bridge answers" not in result.stderr
    assert str(port) not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", COMMANDS)
async def test_the_webhook_listener_is_named_not_an_admin_server(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    async with running_bridge(make_config(tmp_path)) as sv:
        address = f"127.0.0.1:{webhook_of(sv).port}"
        result = await _run_cli(tmp_path, *command, "--admin", address)
    assert result.returncode == 1, result.stderr
    assert f"the server at {address} answered " in result.stderr
    assert NOT_ADMIN in result.stderr
    assert "--admin the bridge's admin server" in result.stderr
    assert "older than this command" not in result.stderr
    assert "did not send a test event" not in result.stderr


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serving(tmp_path: Path, handler: Handler, *args: str) -> tuple[str, int, str]:
    """Run ``args --admin`` against a server answering every request with ``handler``: the
    address, the exit status and stderr."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        address = f"127.0.0.1:{runner.addresses[0][1]}"
        result = await _run_cli(tmp_path, *args, "--admin", address)
    finally:
        await runner.cleanup()
    return address, result.returncode, result.stderr


async def older_bridge(request: web.Request) -> web.Response:
    """An admin server from before /api/stream and /trigger: its /healthz is a bridge's."""
    if request.path == "/healthz":
        return web.json_response({"status": "ok", "time": time.time()})
    raise web.HTTPNotFound()


@pytest.mark.parametrize(
    ("command", "path"), [(("tail",), "/api/stream"), (("trigger", "--sink", "audit"), "/trigger")]
)
async def test_an_older_bridge_is_told_from_another_server(
    tmp_path: Path, command: tuple[str, ...], path: str
) -> None:
    address, code, err = await serving(tmp_path, older_bridge, *command)
    assert code == 1, err
    assert f"the bridge at {address} has no {path}: it is older than this command" in err
    assert NOT_ADMIN not in err


async def test_tail_does_not_follow_a_page_that_is_no_event_stream(tmp_path: Path) -> None:
    # A catch-all web server answers 200 to any path: tail used to follow it, silent for good.
    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<html>hello</html>", content_type="text/html")

    address, code, err = await serving(tmp_path, page, "tail")
    assert code == 1, err
    said = "answered /api/stream with something other than an event stream"
    assert f"the server at {address} {said}: {NOT_ADMIN}" in err
    assert "following" not in err
