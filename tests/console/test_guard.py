"""The admin server's safety rules over plain HTTP, each on its own: the Host check (DNS
rebinding), JSON POSTs from the console's own origin, the login and its session cookie beside the
bearer token, the loopback rule without a token, and the headers on every response."""

from __future__ import annotations

import html.parser
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Receiver, events_named, running_bridge
from structlog.testing import capture_logs

from bridge.console.sessions import COOKIE
from bridge.supervisor import Supervisor

from .conftest import TOKEN, base_url, console_config

EVIL = "evil.example"
PRIVATE = ("/", "/status", "/api/overview", "/api/events", "/api/dead", "/static/console.js")
PUBLIC = ("/healthz", "/readyz", "/metrics")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A jar that keeps cookies for 127.0.0.1 (an IP address), as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def open_bridge(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Supervisor]:
    """No token, on loopback: private paths answer anyone who reaches the address."""
    async with running_bridge(console_config(tmp_path, None, receiver)) as sv:
        yield sv


@pytest.fixture
async def token_bridge(tmp_path: Path, receiver: Receiver) -> AsyncIterator[Supervisor]:
    async with running_bridge(console_config(tmp_path, None, receiver, token=TOKEN)) as sv:
        yield sv


def port_of(sv: Supervisor) -> int:
    assert sv.admin is not None
    assert sv.admin.port
    return sv.admin.port


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.request(method, url, **kwargs) as response:
        body: Any = await response.text()
        if response.content_type == "application/json":
            body = await response.json()
        return response.status, body, response


# --- Host -------------------------------------------------------------------------------------


async def test_a_rebinding_host_gets_403_on_private_paths_while_probes_answer(
    open_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base, host = base_url(open_bridge), f"{EVIL}:{port_of(open_bridge)}"
    for path in PRIVATE:
        status, body, _ = await call(http, "GET", base + path, headers={"Host": host})
        assert status == 403, path
        assert "Host" in body["error"]
    status, body, _ = await call(
        http, "POST", base + "/api/dead/purge", json={"sink": "agent"}, headers={"Host": host}
    )
    assert status == 403
    for path in PUBLIC:
        status, _, _ = await call(http, "GET", base + path, headers={"Host": host})
        assert status == 200, path


async def test_the_listen_address_and_allowed_hosts_are_answered(
    tmp_path: Path, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    allowed = ["Console.Example.com", "localhost:8000"]
    config = console_config(tmp_path, None, receiver, allowed_hosts=allowed)
    async with running_bridge(config) as sv:
        base, port = base_url(sv), port_of(sv)
        answered = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
        answered += ["console.example.com", "localhost:8000"]
        for host in answered:
            status, _, _ = await call(http, "GET", base + "/api/overview", headers={"Host": host})
            assert status == 200, host
        refused = [f"localhost:{port + 1}", "console.example.com:8443", f"{EVIL}:{port}", ""]
        refused += [f"127.0.0.2:{port}", "localhost"]
        for host in refused:
            status, _, _ = await call(http, "GET", base + "/api/overview", headers={"Host": host})
            assert status == 403, host


async def test_a_wildcard_listen_answers_ip_literals_and_localhost_only(
    tmp_path: Path, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    config = console_config(tmp_path, None, receiver, listen="0.0.0.0:0", token=TOKEN)
    async with running_bridge(config) as sv:
        base, port = base_url(sv), port_of(sv)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for host in (
            f"127.0.0.1:{port}",
            f"10.1.2.3:{port}",
            f"[fd00::1]:{port}",
            f"localhost:{port}",
        ):
            headers = {**bearer, "Host": host}
            status, _, _ = await call(http, "GET", base + "/status", headers=headers)
            assert status == 200, host
        for host in (f"{EVIL}:{port}", f"10.1.2.3.{EVIL}:{port}", f"10.1.2.3:{port + 1}"):
            headers = {**bearer, "Host": host}
            status, _, _ = await call(http, "GET", base + "/status", headers=headers)
            assert status == 403, host


# --- Origin and content type ------------------------------------------------------------------


async def test_state_changes_are_json_posts_from_the_consoles_own_origin(
    open_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(open_bridge)
    url = base + "/api/dead/retry"
    own = {"Origin": base}
    body = {"sink": "agent"}
    for origin in (f"http://{EVIL}", "null", f"http://127.0.0.1:{port_of(open_bridge) + 1}"):
        status, answer, _ = await call(http, "POST", url, json=body, headers={"Origin": origin})
        assert status == 403, origin
        assert "Origin" in answer["error"]
    # A form can post text/plain, urlencoded or multipart without a preflight; never JSON.
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        status, _, _ = await call(
            http, "POST", url, data=b'{"sink": "agent"}', headers={**own, "Content-Type": kind}
        )
        assert status == 403, kind
    status, answer, _ = await call(http, "POST", url, json=body, headers=own)
    assert (status, answer) == (200, {"retried": 0})
    # A program (no Origin) on this loopback listen without a token, as `trigger` has always been.
    status, answer, _ = await call(http, "POST", url, json=body)
    assert (status, answer) == (200, {"retried": 0})
    status, _, _ = await call(http, "POST", url, data=b'{"sink": "agent"}')
    assert status == 403  # the console's API takes JSON only
    # Nothing changes state on GET.
    for path in ("/api/dead/retry", "/api/dead/purge", "/login", "/logout"):
        status, _, _ = await call(http, "GET", base + path)
        assert status == 405, path
    # Logging in or out is a browser's act: it needs the Origin.
    status, _, _ = await call(http, "POST", base + "/logout", json={})
    assert status == 403


# --- token, login, session ----------------------------------------------------------------------


class Tags(html.parser.HTMLParser):
    """Every start tag of a page, with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


async def test_with_a_token_a_login_sets_a_session_cookie_that_stands_in_for_it(
    token_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(token_bridge)
    own = {"Origin": base}
    status, page, _ = await call(http, "GET", base + "/")
    assert status == 200
    (field,) = [attrs for tag, attrs in tags_of(page) if tag == "input"]
    assert field["type"] == "password"
    assert "name" not in field  # a form submitted without the script sends nothing
    assert ("form", {"id": "login", "method": "post", "action": "/login"}) in tags_of(page)
    assert 'id="readiness-state"' not in page

    status, answer, _ = await call(http, "GET", base + "/api/overview")
    assert status == 401
    status, _, _ = await call(http, "POST", base + "/login", json={"token": "wrong"}, headers=own)
    assert status == 401
    status, _, _ = await call(http, "POST", base + "/login", json={"token": TOKEN})
    assert status == 403  # no Origin
    status, _, response = await call(
        http, "POST", base + "/login", json={"token": TOKEN}, headers=own
    )
    assert status == 200
    cookie = response.cookies[COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie.value
    assert TOKEN not in cookie.value
    assert TOKEN not in response.headers.get("Set-Cookie", "")

    status, overview, _ = await call(http, "GET", base + "/api/overview")
    assert status == 200
    assert overview["readiness"]["state"] in ("ready", "degraded")
    status, page, _ = await call(http, "GET", base + "/")
    assert 'id="readiness-state"' in page
    assert TOKEN not in page
    # The cookie rides along by itself, so a state change on it needs the Origin.
    url = base + "/api/dead/retry"
    status, _, _ = await call(http, "POST", url, json={"sink": "agent"})
    assert status == 403
    status, answer, _ = await call(http, "POST", url, json={"sink": "agent"}, headers=own)
    assert (status, answer) == (200, {"retried": 0})

    status, _, _ = await call(http, "POST", base + "/logout", json={}, headers=own)
    assert status == 200
    http.cookie_jar.update_cookies({COOKIE: cookie.value})  # a copy kept from before
    status, _, _ = await call(http, "GET", base + "/api/overview")
    assert status == 401


async def test_wrong_logins_are_logged_once_a_minute_without_the_guess(
    token_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(token_bridge)
    with capture_logs() as logs:
        for guess in ("guess-1", "guess-2", "guess-3"):
            status, _, _ = await call(
                http, "POST", base + "/login", json={"token": guess}, headers={"Origin": base}
            )
            assert status == 401
    (line,) = events_named(logs, "console.login_failed")
    assert "guess" not in repr(logs)
    assert line["suppressed"] == 0


async def test_the_bearer_token_works_as_before_and_a_program_needs_no_origin(
    token_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(token_bridge)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/status", "/api/overview", "/api/events", "/api/dead"):
        status, _, _ = await call(http, "GET", base + path, headers=bearer)
        assert status == 200, path
        status, _, _ = await call(http, "GET", base + path, headers={"Authorization": "Bearer x"})
        assert status == 401, path
    status, answer, _ = await call(
        http, "POST", base + "/api/dead/purge", json={"sink": "agent"}, headers=bearer
    )
    assert (status, answer) == (200, {"purged": 0})
    status, _, _ = await call(
        http,
        "POST",
        base + "/api/dead/purge",
        json={"sink": "agent"},
        headers={**bearer, "Origin": f"http://{EVIL}"},
    )
    assert status == 403


async def test_without_a_token_the_console_answers_on_loopback_only(
    tmp_path: Path, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    config = console_config(tmp_path, None, receiver, listen="0.0.0.0:0")
    async with running_bridge(config) as sv:
        base = base_url(sv)
        for path in PRIVATE:
            status, _, _ = await call(http, "GET", base + path)
            assert status == 403, path
        status, _, _ = await call(http, "GET", base + "/healthz")
        assert status == 200


# --- headers and the page itself --------------------------------------------------------------


async def test_every_response_carries_the_security_headers(
    token_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(token_bridge)
    answers = [
        await call(http, "GET", base + path)
        for path in ("/", "/static/console.js", "/static/nope.js", "/api/overview", "/healthz")
    ]
    answers.append(await call(http, "GET", base + "/", headers={"Host": EVIL}))
    assert [status for status, _, _ in answers] == [200, 200, 404, 401, 200, 403]
    for _, _, response in answers:
        headers = response.headers
        assert headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Frame-Options"] == "DENY"


async def test_the_pages_hold_no_inline_script_or_style(
    open_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(open_bridge)
    _, console, _ = await call(http, "GET", base + "/")
    async with http.get(base + "/static/console.js") as response:
        assert response.content_type == "text/javascript"
    async with http.get(base + "/static/console.css") as response:
        assert response.content_type == "text/css"
    for tag, attrs in tags_of(console):
        assert "style" not in attrs, tag
        assert not any(name.startswith("on") for name in attrs), tag
        if tag == "script":
            assert attrs.get("src") == "/static/console.js"
    assert "<script>" not in console
    assert "<style" not in console


async def test_behind_a_tls_proxy_the_session_cookie_is_secure(
    token_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    # The proxy speaks TLS to the browser and plain HTTP to the bridge: the browser's Origin says
    # https, and the cookie must never travel back in the clear.
    base = base_url(token_bridge)
    https_origin = {"Origin": "https://" + base.removeprefix("http://")}
    status, _, response = await call(
        http, "POST", base + "/login", json={"token": TOKEN}, headers=https_origin
    )
    assert status == 200
    assert response.cookies[COOKIE]["secure"] is True
    status, _, response = await call(
        http, "POST", base + "/login", json={"token": TOKEN}, headers={"Origin": base}
    )
    assert status == 200
    assert not response.cookies[COOKIE]["secure"]


async def test_a_guess_that_is_not_text_is_a_wrong_guess_not_an_error(
    token_bridge: Supervisor, http: aiohttp.ClientSession
) -> None:
    base = base_url(token_bridge)
    with capture_logs() as logs:
        status, _, _ = await call(
            http,
            "POST",
            base + "/login",
            data=b'{"token": "\\ud800"}',
            headers={"Origin": base, "Content-Type": "application/json"},
        )
        assert status == 401
        status, _, _ = await call(
            http, "GET", base + "/api/overview", headers={"Authorization": "Bearer \udcff"}
        )
        assert status == 401
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
