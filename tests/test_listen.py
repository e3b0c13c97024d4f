"""``openmail-bridge listen --forward-to``: a real subprocess against the simulator, forwarding to a
handler written as OpenMail documents its webhook receivers; SIGKILL and restart lose nothing;
the refusals name what is missing. The plan (config tree, state directory, lines) is pure and
tested directly."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.cli.listen_plan import (
    SINK,
    Outcome,
    Rejection,
    attempt_line,
    config_tree,
    env_reference,
    explain,
    literal,
    rejection_message,
    state_dir,
)
from bridge.config import Secret, build_config
from bridge.errors import ConfigError
from bridge.simulator import DEMO_API_KEY, Simulator
from bridge.sinks import SINK_TYPES
from bridge.sources.ws_session import DisconnectKind
from tests.conftest import wait_until

HANDLER_SECRET = "listen-handler-secret-0003"


# --- the agent's handler, as OpenMail's docs write one --------------------------------------------


@dataclass
class Handler:
    """OpenMail's documented webhook receiver: raw body, ``X-Timestamp`` within 300 s, hex
    HMAC-SHA256 of ``"{timestamp}.{body}"`` compared in constant time, 400 otherwise. ``hold`` makes
    it do its work and then not answer until ``release`` (the bridge never learns the outcome)."""

    secret: str
    processed: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    rejected: int = 0
    held: int = 0
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/openmail"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers.get("X-Timestamp", "")
        signature = request.headers.get("X-Signature", "")
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > 300:
            self.rejected += 1
            return web.json_response({"error": "stale timestamp"}, status=400)
        expected = hmac.new(
            self.secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(expected, signature):
            self.rejected += 1
            return web.json_response({"error": "invalid signature"}, status=400)
        self.processed.append((json.loads(raw), dict(request.headers)))
        if self.hold:
            self.held += 1
            await self.release.wait()
        return web.json_response({"received": True})

    def ids(self) -> list[str]:
        return [event["event_id"] for event, _ in self.processed]


@pytest.fixture
async def handler() -> AsyncIterator[Handler]:
    h = Handler(secret=HANDLER_SECRET)
    app = web.Application()
    app.router.add_post("/webhooks/openmail", h.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    h.port = int(runner.addresses[0][1])
    try:
        yield h
    finally:
        h.release.set()
        await runner.cleanup()


# --- listen in a subprocess -----------------------------------------------------------------------


@dataclass
class Listen:
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def lines(self) -> list[str]:
        return self.stdout.read_text().splitlines() if self.stdout.exists() else []

    def err(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""


@dataclass
class Launcher:
    tmp_path: Path
    started: list[Listen] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("OPENMAIL_WS_URL",)}
        env.update(
            OPENMAIL_API_KEY=DEMO_API_KEY,
            AGENT_WEBHOOK_SECRET=HANDLER_SECRET,
            XDG_STATE_HOME=str(self.tmp_path / "xdg"),
        )
        env.update(extra)
        return env

    def start(self, *args: str, env: dict[str, str] | None = None) -> Listen:
        n = len(self.started)
        out, err = self.tmp_path / f"listen{n}.out", self.tmp_path / f"listen{n}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "listen", *args],
                stdout=stdout,
                stderr=stderr,
                env=self.env() if env is None else env,
            )
        listen = Listen(proc, out, err)
        self.started.append(listen)
        return listen

    def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """A listen expected to exit at once: (exit status, stderr)."""
        listen = self.start(*args, env=env)
        return listen.proc.wait(timeout=30), listen.err()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    yield launcher
    for listen in launcher.started:
        if listen.proc.poll() is None:
            listen.proc.kill()
            listen.proc.wait(timeout=10)


async def subscribed(sim: Simulator, listen: Listen, before: set[int]) -> None:
    """Wait until ``listen`` holds a new subscribed connection (ids in ``before`` are older)."""
    try:
        await wait_until(
            lambda: any(c.subscribed and c.id not in before for c in sim.connections), timeout=20
        )
    except AssertionError:
        raise AssertionError(
            f"not subscribed (exit {listen.proc.poll()}):\n{listen.err()}"
        ) from None


async def exit_status(listen: Listen, timeout: float = 20) -> int:
    return await asyncio.to_thread(listen.proc.wait, timeout)


def delivered_line(line: str, event: dict[str, Any]) -> bool:
    parts = line.split()
    return parts[2:] == [event["event_id"], event["event"], event["inbox_id"], "[200]", "delivered"]


# --- end to end -----------------------------------------------------------------------------------


async def test_forwards_verified_events_and_a_sigkill_restart_loses_nothing(
    sim: Simulator, handler: Handler, launcher: Launcher, tmp_path: Path
) -> None:
    args = ("--forward-to", handler.url, "--url", sim.ws_url)
    first = launcher.start(*args)
    await subscribed(sim, first, set())
    state = state_dir(
        {"XDG_STATE_HOME": str(tmp_path / "xdg")}, Path("/nonexistent"), sim.ws_url, []
    )
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert (state / "bridge.db").exists()

    before_kill = [await sim.inject() for _ in range(5)]
    await wait_until(lambda: len(first.lines()) == 5, timeout=20)
    # Each is a thread of its own, delivered side by side: order holds within a thread only.
    assert sorted(handler.ids()) == sorted(before_kill)
    assert handler.rejected == 0
    events = {event["event_id"]: event for event, _ in handler.processed}
    assert sorted(line.split()[2] for line in first.lines()) == sorted(before_kill)
    for line in first.lines():
        assert delivered_line(line, events[line.split()[2]]), line

    # The handler does its work but never answers: the bridge dies not knowing the outcome.
    handler.hold = True
    unknown = [await sim.inject() for _ in range(3)]
    await wait_until(lambda: handler.held == 3, timeout=20)
    first.proc.send_signal(signal.SIGKILL)
    assert await exit_status(first) == -signal.SIGKILL
    handler.hold = False
    handler.release.set()
    assert len(first.lines()) == 5  # no line for an attempt whose outcome never came
    while_down = [await sim.inject() for _ in range(2)]  # replayed from the cursor on restart

    before = {c.id for c in sim.connections}
    second = launcher.start(*args)
    await subscribed(sim, second, before)
    everything = before_kill + unknown + while_down
    await wait_until(lambda: set(handler.ids()) == set(everything), timeout=20)
    await wait_until(lambda: len(second.lines()) == len(unknown + while_down), timeout=20)
    second.proc.send_signal(signal.SIGTERM)
    assert await exit_status(second) == 0

    # Exactly the deliveries whose outcome was unknown came twice, with the same X-Event-Id.
    ids = handler.ids()
    assert Counter(ids) - Counter(set(ids)) == Counter(unknown)
    assert handler.rejected == 0
    for event, headers in handler.processed:
        assert headers["X-Event-Id"] == event["event_id"]
    events = {event["event_id"]: event for event, _ in handler.processed}
    assert sorted(line.split()[2] for line in second.lines()) == sorted(unknown + while_down)
    for line in second.lines():
        assert delivered_line(line, events[line.split()[2]]), line


async def test_a_second_listen_on_the_same_stream_exits_1_and_secret_warns(
    sim: Simulator, handler: Handler, launcher: Launcher
) -> None:
    inboxes = ("--inbox", sim.inboxes[0], "--inbox", sim.inboxes[1])
    env = launcher.env(AGENT_WEBHOOK_SECRET="")  # --secret replaces it
    first = launcher.start(
        "--forward-to", handler.url, "--url", sim.ws_url, *inboxes, "--secret", HANDLER_SECRET,
        env=env,
    )  # fmt: skip
    await subscribed(sim, first, set())
    assert "--secret shows in the process list" in first.err()
    event_id = await sim.inject(inbox_id=sim.inboxes[1])
    await wait_until(lambda: handler.ids() == [event_id], timeout=20)
    assert handler.rejected == 0

    # The same URL and inboxes, given in another order: the same state, locked by the first.
    reordered = ("--inbox", sim.inboxes[1], "--inbox", sim.inboxes[0])
    status, err = launcher.run("--forward-to", handler.url, "--url", sim.ws_url, *reordered)
    assert status == 1
    assert "already running" in err
    assert "in use by another openmail-bridge" in err

    first.proc.send_signal(signal.SIGINT)
    assert await exit_status(first) == 0


# --- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unset", "extra", "named"),
    [
        ("OPENMAIL_API_KEY", (), "OPENMAIL_API_KEY"),
        ("AGENT_WEBHOOK_SECRET", (), "AGENT_WEBHOOK_SECRET"),
        ("MY_HANDLER_SECRET", ("--secret-env", "MY_HANDLER_SECRET"), "MY_HANDLER_SECRET"),
    ],
)
def test_a_missing_variable_exits_2_naming_it(
    launcher: Launcher, unset: str, extra: tuple[str, ...], named: str
) -> None:
    env = {k: v for k, v in launcher.env().items() if k != unset}
    status, err = launcher.run("--forward-to", "http://127.0.0.1:9/hook", *extra, env=env)
    assert status == 2
    assert f"{named} is not set" in err
    assert not (launcher.tmp_path / "xdg").exists()  # nothing created before the refusal


def test_invalid_options_are_named_as_the_user_gave_them(launcher: Launcher) -> None:
    status, err = launcher.run("--forward-to", "not-a-url", "--url", "https://example.invalid/ws")
    assert status == 2
    assert "--forward-to: not an http(s) URL" in err
    assert "--url: not a ws(s) URL" in err


# --- OpenMail refuses the key or an inbox -------------------------------------------------------


@pytest.mark.parametrize(
    ("auth_failure", "how"), [("close", "close 4001"), ("http", "upgrade refused with HTTP 401")]
)
async def test_a_rejected_key_ends_listen_with_exit_1_naming_the_variable(
    launcher: Launcher, auth_failure: str, how: str
) -> None:
    # The daemon retries at the backoff cap for a reload to mend the key; at a terminal nothing
    # will, and the daemon's hint ("check openmail.api_key") names a key listen has not got.
    sim = Simulator(auth_failure=auth_failure)  # type: ignore[arg-type]
    await sim.start()
    try:
        env = launcher.env(OPENMAIL_API_KEY="om_rejected_key_4711")
        listen = launcher.start("--forward-to", "http://127.0.0.1:9/hook", "--url", sim.ws_url,
                                env=env)  # fmt: skip
        status = await exit_status(listen)
        assert len(sim.rejections) == 1  # stopped at the first refusal, not retried
    finally:
        await sim.stop()
    err = listen.err()
    assert status == 1, err
    assert err.splitlines()[-1] == (
        f"openmail-bridge: listen: OpenMail rejected the API key in $OPENMAIL_API_KEY ({how}); "
        "export a valid key and start again"
    )
    assert "openmail.api_key" not in err
    assert "retry" not in err
    assert "Traceback" not in err
    assert "om_rejected_key_4711" not in err + "\n".join(listen.lines())


async def test_an_inbox_the_key_does_not_own_ends_listen_naming_inbox(
    sim: Simulator, launcher: Launcher
) -> None:
    listen = launcher.start("--forward-to", "http://127.0.0.1:9/hook", "--url", sim.ws_url,
                            "--inbox", sim.inboxes[0], "--inbox", "inb_not_this_keys")  # fmt: skip
    status = await exit_status(listen)
    err = listen.err()
    assert status == 1, err
    assert err.splitlines()[-1] == (
        "openmail-bridge: listen: OpenMail refused the subscription: an inbox given with --inbox "
        f"({sim.inboxes[0]}, inb_not_this_keys) is not owned by the API key in "
        "$OPENMAIL_API_KEY; give only that account's inboxes, or no --inbox for all of them"
    )
    assert "openmail.websocket.inbox_ids" not in err
    assert "Traceback" not in err


def test_the_rejections_listen_stops_on_are_the_sources_own_kinds() -> None:
    assert {str(r) for r in Rejection} == {
        str(DisconnectKind.KEY_REJECTED),
        str(DisconnectKind.SUBSCRIBE_REJECTED),
    }
    # Not too many connections: another client may close, and listen retries that one.
    assert str(DisconnectKind.TOO_MANY_CONNECTIONS) not in {str(r) for r in Rejection}
    line = rejection_message(Rejection.KEY, [], "OpenMail said: \x1b]52;c;eA==\x07")
    assert "\x1b" not in line
    assert "\x07" not in line


# --- the plan -------------------------------------------------------------------------------------


def test_state_dir_is_per_url_and_inbox_set_under_xdg_state_home(tmp_path: Path) -> None:
    env = {"XDG_STATE_HOME": "/srv/state"}
    home = tmp_path / "home"
    a = state_dir(env, home, "wss://a/v1/ws", ["inb_1", "inb_2"])
    assert a.parent == Path("/srv/state/openmail-bridge")
    assert a.name.startswith("listen-")
    assert state_dir(env, home, "wss://a/v1/ws", ["inb_2", "inb_1", "inb_2"]) == a
    assert state_dir(env, home, "wss://a/v1/ws", ["inb_1"]) != a
    assert state_dir(env, home, "wss://b/v1/ws", ["inb_1", "inb_2"]) != a
    # Unset, empty or relative (which the XDG spec says to ignore): ~/.local/state.
    for env in ({}, {"XDG_STATE_HOME": ""}, {"XDG_STATE_HOME": "rel"}):
        assert state_dir(env, home, "wss://a", []).parent == home / ".local/state/openmail-bridge"


def test_the_tree_loads_through_runs_loader_with_values_taken_as_written(tmp_path: Path) -> None:
    tree = config_tree(
        url="ws://127.0.0.1:1/v1/ws",
        inboxes=["inb_$x"],
        forward_to="http://127.0.0.1:2/hook?a=$b",
        secret=literal("s$cret${X}"),
        state_path=tmp_path / "st$te" / "bridge.db",
        log_level="warning",
    )
    config = build_config(
        tree, sink_types=SINK_TYPES, base_dir=tmp_path, env={"OPENMAIL_API_KEY": "k"}
    )
    assert config.openmail.api_key == Secret("k")
    assert config.openmail.webhook.enabled is False
    assert config.admin.enabled is False
    assert config.openmail.websocket.inbox_ids == ("inb_$x",)
    assert config.state.path == tmp_path / "st$te" / "bridge.db"
    options = config.sinks[SINK].options
    assert options.url == "http://127.0.0.1:2/hook?a=$b"  # type: ignore[attr-defined]
    assert options.secret == Secret("s$cret${X}")  # type: ignore[attr-defined]
    assert [r.sinks for r in config.routes] == [(SINK,)]

    by_env = {
        **tree,
        "sinks": {SINK: {"type": "http", "url": "http://h/", "secret": env_reference("S")}},
    }
    with pytest.raises(ConfigError) as caught:
        build_config(
            by_env, sink_types=SINK_TYPES, base_dir=tmp_path, env={"OPENMAIL_API_KEY": "k"}
        )
    assert [explain(p) for p in caught.value.problems] == [
        "the signing secret: environment variable S is not set (${S})"
    ]


def test_explain_names_options_and_leaves_other_problems_alone() -> None:
    assert explain("sinks.forward.url: not an http(s) URL") == "--forward-to: not an http(s) URL"
    assert explain("openmail.websocket.inbox_ids[0]: bad") == "--inbox: bad"
    assert explain("openmail.websocket.urlx: odd") == "openmail.websocket.urlx: odd"
    assert explain("<top>: broken") == "<top>: broken"


def test_attempt_line_has_time_event_type_inbox_status_and_outcome() -> None:
    at = time.mktime((2026, 2, 24, 10, 5, 0, 0, 0, -1))
    line = attempt_line(
        at, event_id="evt_1", event_type="message.received", inbox_id="inb_1",
        status=200, outcome=Outcome.DELIVERED,
    )  # fmt: skip
    assert line == "2026-02-24 10:05:00  evt_1  message.received  inb_1  [200] delivered"
    line = attempt_line(
        at, event_id="evt_2", event_type="pod.suspended", inbox_id=None, status=None,
        outcome=Outcome.RETRYING, error="cannot connect to http://h/: Connection refused",
    )  # fmt: skip
    assert line.endswith("evt_2  pod.suspended  -  [---] will retry: cannot connect to http://h/: "
                         "Connection refused")  # fmt: skip
