"""Wrong admin tokens are bounded per client address: the console's login and a wrong bearer token
count alike; past the limit the address gets 429 with ``Retry-After`` and its tokens are not
compared (a right one included), until its oldest counted failure is a minute old. Loopback,
which every tunnelled client shares, has a larger allowance; the table of addresses is bounded.
Over real sockets against a real admin server, with its clock injected."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import Receiver, running_bridge
from fake_time import FakeTime

from bridge.admin import AdminServer
from bridge.console.logins import LIMIT, LOOPBACK_LIMIT, WINDOW, FailedLogins, peer_key
from tests.test_cli_operator import _run_cli

from .conftest import TOKEN, console_config

REMOTE = "203.0.113.7"
Owner = Callable[[web.Request], Awaitable[bool]]


# --- the count, on its own -----------------------------------------------------------------------


def test_an_address_is_refused_after_the_limit_until_its_oldest_failure_ages_out() -> None:
    clock = FakeTime()
    logins = FailedLogins(clock=clock)
    for n in range(LIMIT):
        assert logins.retry_after(REMOTE) is None, n
        logins.failed(REMOTE)
        clock.advance_to(clock.now + 1)
    # Failures at 0..4 s; now 5 s: the first one counts until 60 s.
    assert logins.retry_after(REMOTE) == int(WINDOW) - LIMIT
    assert logins.retry_after("203.0.113.8") is None  # another address is not held back
    clock.advance_to(clock.now + WINDOW - LIMIT)
    assert logins.retry_after(REMOTE) is None
    # The window slides: one more wrong token, and the next oldest still counts.
    logins.failed(REMOTE)
    assert logins.retry_after(REMOTE) == 1


def test_loopback_has_a_larger_allowance_and_a_login_forgives() -> None:
    clock = FakeTime()
    logins = FailedLogins(clock=clock)
    for _ in range(LOOPBACK_LIMIT - 1):
        logins.failed("127.0.0.1")
    assert logins.retry_after("127.0.0.1") is None  # an operator's typos are not a lockout
    logins.failed("127.0.0.1")
    assert logins.retry_after("127.0.0.1") == int(WINDOW)
    logins.succeeded("127.0.0.1")
    assert logins.retry_after("127.0.0.1") is None


def test_ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() -> None:
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::2")
    assert peer_key("2001:db8:1:2::1") != peer_key("2001:db8:1:3::1")
    assert peer_key("::ffff:203.0.113.7") == (REMOTE, False)
    assert peer_key("::1") == ("loopback", True)
    assert peer_key(None) == ("", False)
    logins = FailedLogins(clock=FakeTime())
    for n in range(LIMIT):  # a host rotating through its /64 is still one client
        logins.failed(f"2001:db8:1:2::{n + 1:x}")
    assert logins.retry_after("2001:db8:1:2::ffff") is not None


def test_a_flood_of_addresses_cannot_grow_the_table() -> None:
    clock = FakeTime()
    logins = FailedLogins(max_peers=100, clock=clock)
    for n in range(10_000):
        logins.failed(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(logins) == 100
    # The addresses that failed longest ago went first: the newest are still counted.
    assert peer_key("10.0.39.15")[0] in logins._failures
    clock.advance_to(clock.now + WINDOW + 1)
    logins.failed(REMOTE)  # every other address's failures have aged out meanwhile
    assert len(logins) == 1


# --- over HTTP ------------------------------------------------------------------------------------


async def stranger(_: web.Request) -> bool:
    return False  # another local user, or a client behind a proxy: never the bridge's own


@contextlib.asynccontextmanager
async def admin_server(
    tmp_path: Path, receiver: Receiver, owner: Owner | None
) -> AsyncIterator[tuple[str, FakeTime]]:
    clock = FakeTime()
    config = console_config(tmp_path, None, receiver, token=TOKEN)
    async with running_bridge(config) as sv:
        server = AdminServer(config.admin, sv, clock=clock, owner=owner)
        await server.start()
        try:
            yield f"http://127.0.0.1:{server.port}", clock
        finally:
            await server.stop()


@pytest.fixture
async def admin(tmp_path: Path, receiver: Receiver) -> AsyncIterator[tuple[str, FakeTime]]:
    """A token-protected admin server on a running bridge, its clock in the test's hands, its
    clients strangers (the tests run as the bridge's own user, whom the limit lets through)."""
    async with admin_server(tmp_path, receiver, stranger) as served:
        yield served


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, str | None]:
    async with http.request(method, url, **kwargs) as response:
        answer = await response.json() if response.content_type == "application/json" else None
        return response.status, answer, response.headers.get("Retry-After")


async def test_wrong_logins_and_bearers_from_one_address_end_in_429_for_a_while(
    admin: tuple[str, FakeTime],
) -> None:
    base, clock = admin
    own = {"Origin": base}
    async with aiohttp.ClientSession() as http:
        # Logins and bearer tokens count together: either would otherwise be the open door.
        for n in range(LOOPBACK_LIMIT):
            if n % 2:
                status, _, _ = await call(http, "POST", base + "/login", json={"token": f"g{n}"},
                                          headers=own)  # fmt: skip
            else:
                bearer = {"Authorization": f"Bearer guess-{n}"}
                status, _, _ = await call(http, "GET", base + "/api/overview", headers=bearer)
            assert status == 401, n
        status, answer, wait = await call(
            http, "POST", base + "/login", json={"token": TOKEN}, headers=own
        )
        # Refused before comparing, the right token too: a 200 would tell a guesser it won.
        assert (status, wait) == (429, str(int(WINDOW)))
        assert "too many wrong admin tokens" in answer["error"]
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert (await call(http, "GET", base + "/api/overview", headers=right))[0] == 429
        # What needs no token still answers: probes, and the page's login form.
        assert (await call(http, "GET", base + "/healthz"))[0] == 200
        assert (await call(http, "GET", base + "/"))[0] == 200
        clock.advance_to(clock.now + WINDOW)
        status, answer, _ = await call(
            http, "POST", base + "/login", json={"token": TOKEN}, headers=own
        )
        assert (status, answer) == (200, {"ok": True})


async def test_a_login_after_a_few_typos_is_let_in_and_forgives_them(
    admin: tuple[str, FakeTime],
) -> None:
    base, _ = admin
    own = {"Origin": base}
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            status, _, _ = await call(
                http, "POST", base + "/login", json={"token": "typo"}, headers=own
            )
            assert status == 401
        status, _, _ = await call(http, "POST", base + "/login", json={"token": TOKEN}, headers=own)
        assert status == 200
        for _ in range(LOOPBACK_LIMIT - 1):  # the count started over at the login
            status, _, _ = await call(
                http, "POST", base + "/login", json={"token": "typo"}, headers=own
            )
            assert status == 401


async def test_a_command_from_a_refused_address_says_why(
    admin: tuple[str, FakeTime], tmp_path: Path
) -> None:
    base, _ = admin
    async with aiohttp.ClientSession() as http:
        for n in range(LOOPBACK_LIMIT):
            bearer = {"Authorization": f"Bearer guess-{n}"}
            assert (await call(http, "GET", base + "/status", headers=bearer))[0] == 401
    result = await _run_cli(tmp_path, "status", "--admin", base, "--token", TOKEN)
    assert result.returncode == 1, result.stderr
    assert (
        f"the bridge at {base.removeprefix('http://')} refuses requests from this address for "
        f"{int(WINDOW)}s: too many wrong admin tokens came from it (429)"
    ) in result.stderr
    assert TOKEN not in result.stderr


async def test_without_a_token_nothing_is_counted(tmp_path: Path, receiver: Receiver) -> None:
    # No token to guess: a program sending one anyway is neither counted nor refused.
    async with running_bridge(console_config(tmp_path, None, receiver)) as sv:
        assert sv.admin is not None
        base = f"http://127.0.0.1:{sv.admin.port}"
        async with aiohttp.ClientSession() as http:
            for n in range(LOOPBACK_LIMIT + 1):
                bearer = {"Authorization": f"Bearer stray-{n}"}
                assert (await call(http, "GET", base + "/status", headers=bearer))[0] == 200
        assert len(sv.admin.logins) == 0


def test_every_loopback_address_counts_as_one() -> None:
    # Any local user may connect from 127.0.0.2, 127.0.0.3, ...: each its own key would give
    # each its own allowance, and past the table's size no bound at all.
    logins = FailedLogins(clock=FakeTime())
    for n in range(LOOPBACK_LIMIT):
        logins.failed(f"127.0.0.{n + 2}")
    assert logins.retry_after("127.0.0.1") is not None
    assert logins.retry_after("::1") is not None
    assert len(logins) == 1


async def test_a_login_whose_body_comes_after_the_limit_is_not_compared(
    admin: tuple[str, FakeTime],
) -> None:
    # The guard counts a login's address when its headers are in; its body may follow later.
    # Logins sent together would all pass that count before any is compared, so the login asks
    # again once its body is in.
    base, _ = admin
    port = int(base.rsplit(":", 1)[1])
    body = b'{"token": "guess"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {base}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        await writer.drain()
        async with aiohttp.ClientSession() as http:
            for n in range(LOOPBACK_LIMIT):  # the address reaches its limit meanwhile
                status, _, _ = await call(http, "POST", base + "/login", json={"token": f"g{n}"},
                                          headers={"Origin": base})  # fmt: skip
                assert status == 401, n
        writer.write(body)
        await writer.drain()
        async with asyncio.timeout(10):
            assert (await reader.readline()).split()[1] == b"429"
    finally:
        writer.close()


async def test_the_bridges_own_user_is_never_locked_out(tmp_path: Path, receiver: Receiver) -> None:
    # Whoever guesses beside it must not shut out the bridge's own commands and agent: this
    # test runs as the bridge's own user (or root), looked up in the kernel's socket table.
    async with admin_server(tmp_path, receiver, None) as (base, _), aiohttp.ClientSession() as http:
        for n in range(LOOPBACK_LIMIT + 5):
            bearer = {"Authorization": f"Bearer guess-{n}"}
            assert (await call(http, "GET", base + "/api/overview", headers=bearer))[0] == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert (await call(http, "GET", base + "/api/overview", headers=right))[0] == 200
        status, answer, _ = await call(
            http, "POST", base + "/login", json={"token": TOKEN}, headers={"Origin": base}
        )
        assert (status, answer) == (200, {"ok": True})
