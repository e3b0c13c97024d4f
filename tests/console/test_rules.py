"""The console's pure parts: the Host and Origin rules, the bounded session table, the words the
panels use for states, and the escaping HTML builder."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

from bridge.config.values import Listen
from bridge.console import guard, overview
from bridge.console.html import el, render, size
from bridge.console.sessions import MAX_SESSIONS, Sessions
from bridge.errors import ConfigError

# --- Host ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("LocalHost:80", ("localhost", 80)),
        ("[::1]:9464", ("[::1]", 9464)),
        ("[::1]", ("[::1]", None)),
        ("example.org", ("example.org", None)),
        ("example.org:x", ("example.org", -1)),
        ("::1", ("::1", None)),
    ],
)
def test_split_host(host: str, expected: tuple[str, int | None]) -> None:
    assert guard.split_host(host) == expected


def test_a_loopback_listen_answers_its_loopback_names_on_its_port() -> None:
    rule = guard.HostRule(Listen("127.0.0.1", 0), 9464, ["proxy.example.org"])
    for host in ("127.0.0.1:9464", "localhost:9464", "LOCALHOST:9464", "[::1]:9464"):
        assert rule.allows(host), host
    assert rule.allows("Proxy.Example.org")
    refused: list[str | None] = ["evil.example:9464", "localhost:9465", "localhost", "", None]
    for refused_host in [*refused, "127.0.0.2:9464"]:
        assert not rule.allows(refused_host), refused_host
    assert not rule.allows("proxy.example.org:9464")  # allowed_hosts match as written


def test_a_named_listen_answers_that_name_and_port_80_may_be_left_out() -> None:
    rule = guard.HostRule(Listen("10.0.0.5", 80), 80)
    assert rule.allows("10.0.0.5")
    assert rule.allows("10.0.0.5:80")
    assert not rule.allows("localhost:80")  # not a loopback listen
    assert not rule.allows("10.0.0.6")


def test_a_wildcard_listen_answers_ip_literals_only() -> None:
    for listen in (Listen("0.0.0.0", 9464), Listen("::", 9464)):
        rule = guard.HostRule(listen, 9464)
        for host in ("192.0.2.7:9464", "[2001:db8::1]:9464", "localhost:9464"):
            assert rule.allows(host), host
        for host in ("evil.example:9464", "192.0.2.7.nip.io:9464", "2001:db8::1", "[::1]:1"):
            assert not rule.allows(host), host


# --- Origin -------------------------------------------------------------------------------------


def refusal(**given: object) -> str | None:
    request: dict[str, object] = {
        "method": "POST",
        "content_type": "application/json",
        "origin": "http://127.0.0.1:9464",
        "host": "127.0.0.1:9464",
        "from_browser": False,
        "console_api": True,
    }
    return guard.state_change_refusal(**(request | given))  # type: ignore[arg-type]


def test_state_change_rules() -> None:
    assert refusal() is None
    assert refusal(origin="https://127.0.0.1:9464") is None  # behind a TLS proxy
    assert refusal(method="PUT") is not None
    assert refusal(content_type="text/plain") is not None
    assert refusal(origin="http://evil.example") is not None
    assert refusal(origin="http://127.0.0.1:9465") is not None
    assert refusal(origin=None) is None  # a program
    assert refusal(origin=None, from_browser=True) is not None
    assert refusal(origin=None, content_type="text/plain", console_api=False) is None
    assert refusal(content_type="text/plain", console_api=False) is not None  # a browser's


# --- sessions -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_end() -> None:
    clock = Clock()
    sessions = Sessions(lifetime=60, clock=clock)
    first = sessions.create()
    assert sessions.valid(first)
    assert not sessions.valid(first + "x")
    assert not sessions.valid(None)
    clock.now += 59
    assert sessions.valid(first)
    clock.now += 1
    assert not sessions.valid(first)
    second = sessions.create()
    sessions.end(second)
    assert not sessions.valid(second)
    assert len(sessions) == 0


def test_the_session_table_is_bounded() -> None:
    sessions = Sessions()
    ids = [sessions.create() for _ in range(100_000)]
    assert len(sessions) == MAX_SESSIONS
    assert sessions.valid(ids[-1])
    assert not sessions.valid(ids[0])  # the oldest went first
    assert len(set(ids)) == len(ids)


# --- the panels' words ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "kind", "shown"),
    [
        ("subscribed", None, "subscribed"),
        ("connecting", None, "reconnecting"),
        ("down", "transient", "reconnecting"),
        ("down", "key_rejected", "rejected key"),
        ("connecting", "key_rejected", "rejected key"),
        ("down", "too_many_connections", "rejected"),
        ("paused", "pushback", "paused by pushback"),
        ("idle", None, "starting"),
    ],
)
def test_the_websocket_state_in_the_consoles_words(
    state: str, kind: str | None, shown: str
) -> None:
    assert overview.source_state(state, kind) == shown


def test_the_readiness_reason_names_the_parts_that_are_not_well() -> None:
    parts = {"websocket": "down", "webhook": "listening", "store": "writable"}
    reason = overview.readiness_reason("degraded", parts, "the API key was rejected")
    assert reason == "websocket down (the API key was rejected)"
    assert overview.readiness_reason("ready", parts, None) == ""
    parts = {"websocket": "disabled", "webhook": "down", "store": "full"}
    assert overview.readiness_reason("unavailable", parts, None) == "webhook down; store full"


def test_a_sinks_state() -> None:
    health = overview.sink_health
    assert (
        health(pending=0, oldest_pending_age=0, last_error_at=None, last_delivered_at=None) == "ok"
    )
    assert health(pending=0, oldest_pending_age=0, last_error_at=5, last_delivered_at=6) == "ok"
    assert (
        health(pending=2, oldest_pending_age=3, last_error_at=7, last_delivered_at=6) == "retrying"
    )
    assert (
        health(pending=2, oldest_pending_age=61, last_error_at=7, last_delivered_at=6) == "failing"
    )
    assert (
        health(pending=0, oldest_pending_age=0, last_error_at=7, last_delivered_at=6) == "failing"
    )


# --- HTML -----------------------------------------------------------------------------------------


def test_the_html_builder_escapes_text_and_attributes() -> None:
    markup = '<script>alert(1)</script>"'
    assert el("td", markup) == "<td>&lt;script&gt;alert(1)&lt;/script&gt;&quot;</td>"
    assert (
        el("tr", data_event_id='x" onclick="y')
        == '<tr data-event-id="x&quot; onclick=&quot;y"></tr>'
    )
    assert el("input", required=True, name=None, hidden=False) == "<input required>"
    assert render(["a", None, el("b", "<i>")]) == "a<b>&lt;i&gt;</b>"
    # What would drive a terminal or reorder the text is shown as its escape, as the CLI shows it.
    assert el("td", "a\x1b]52;c;eA==\x07\u202e<b>\U000e0001 z") == (
        "<td>a\\x1b]52;c;eA==\\x07\\u202e&lt;b&gt;\\U000e0001 z</td>"
    )
    assert (size(512), size(1536), size(5 << 30), size(None)) == (
        "512 B",
        "1.5 KiB",
        "5.0 GiB",
        "—",
    )


# --- config -----------------------------------------------------------------------------------


def test_the_admin_sections_console_keys(tmp_path: Path) -> None:
    config = make_config(tmp_path, admin={"allowed_hosts": ["console.example.org", "[::1]:8000"]})
    assert config.admin.allowed_hosts == ("console.example.org", "[::1]:8000")
    assert config.admin.show_content is False
    for bad in ("https://console.example.org", "console.example.org/", "a b", "", "x:123456"):
        with pytest.raises(ConfigError) as caught:
            make_config(tmp_path, admin={"allowed_hosts": [bad]})
        (problem,) = caught.value.problems
        assert problem.startswith("admin.allowed_hosts: "), problem
