"""The command line, run as users and scripts run it: ``python -m bridge ...`` in a subprocess with
a controlled environment and working directory, checking exit codes and what is printed."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port

from bridge import __version__
from bridge.events import Origin, parse_event
from bridge.store import Store

REPO = Path(__file__).resolve().parent.parent
API_KEY = "om_live_cli_test_7f3e2d1c"
WEBHOOK_SECRET = "whsec-cli-test-4b5a6978"
AGENT_SECRET = "agent-cli-test-0a1b2c3d"
FILE_SECRET = "admin-from-file-9e8d7c6b"


def cli_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the caller's OPENMAIL_*, STATE_DIRECTORY or NOTIFY_SOCKET
    leaks into the command under test."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if "PYTHONPATH" in os.environ:  # the same bridge package as this test process imports
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env | extra


def bridge(
    cwd: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        cwd=cwd,
        env=cli_env(HOME=str(cwd)) | (env or {}),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def webhook_only(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    """A valid config that needs no OpenMail account: webhook source, loopback ports 0."""
    data: dict[str, Any] = {
        "openmail": {
            "websocket": {"enabled": False},
            "webhook": {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET},
        },
        "state": {"path": str(tmp_path / "state" / "bridge.db")},
        "admin": {"listen": "127.0.0.1:0"},
        "log": {"level": "info", "format": "json"},
        "shutdown_timeout": "2s",
        "sinks": {"audit": {"type": "file", "path": "events.jsonl"}},
    }
    data.update(extra)
    return data


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- entry points ------------------------------------------------------------------------------


def test_version(tmp_path: Path) -> None:
    result = bridge(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"openmail-bridge {__version__}"


def test_python_dash_m_bridge_lists_the_commands(tmp_path: Path) -> None:
    result = bridge(tmp_path, "--help")
    assert result.returncode == 0
    for command in ("run", "check", "route-test", "dlq", "status", "simulator", "demo"):
        assert re.search(rf"^\s+{command}\s", result.stdout, re.MULTILINE), command


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = bridge(tmp_path)
    assert result.returncode == 2
    assert "usage: openmail-bridge" in result.stderr


def test_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "openmail-bridge"
    if not script.exists():
        found = shutil.which("openmail-bridge")
        if found is None:
            pytest.skip("the openmail-bridge console script is not installed")
        script = Path(found)
    result = subprocess.run(
        [str(script), "--version"], cwd=tmp_path, env=cli_env(), capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert __version__ in result.stdout


# --- check -------------------------------------------------------------------------------------


def test_check_valid_prints_the_config_with_every_secret_masked(tmp_path: Path) -> None:
    (tmp_path / "admin_token").write_text(FILE_SECRET + "\n")
    data = webhook_only(
        tmp_path,
        admin={"listen": "127.0.0.1:0", "token_file": "admin_token"},
        sinks={"agent": {"type": "http", "url": "http://127.0.0.1:3000/h",
                         "secret": "${AGENT_SECRET}"}},
    )  # fmt: skip
    data["openmail"] |= {"api_key": API_KEY}
    write(tmp_path / "bridge.yaml", data)
    result = bridge(tmp_path, "check", "-c", "bridge.yaml", env={"AGENT_SECRET": AGENT_SECRET})
    assert result.returncode == 0, result.stderr
    assert "bridge.yaml: configuration is valid" in result.stderr
    for secret in (API_KEY, WEBHOOK_SECRET, AGENT_SECRET, FILE_SECRET):
        assert secret not in result.stdout
        assert secret not in result.stderr
    shown = json.loads(result.stdout)
    assert shown["openmail"]["api_key"] == "***"
    assert shown["openmail"]["webhook"]["secret"] == "***"
    assert shown["admin"]["token"] == "***"
    assert shown["sinks"]["agent"]["secret"] == "***"
    # resolved: paths absolute, durations in seconds
    assert shown["state"]["path"] == str(tmp_path / "state" / "bridge.db")
    assert shown["shutdown_timeout"] == 2.0
    assert not (tmp_path / "state").exists(), "check must not create state"


def test_check_invalid_exits_2_listing_every_error(tmp_path: Path) -> None:
    data = webhook_only(tmp_path, bogus=1, shutdown_timeout="soon")
    data["sinks"]["agent"] = {"type": "http", "url": "ftp://nowhere"}
    write(tmp_path / "bridge.yaml", data)
    result = bridge(tmp_path, "check", "-c", "bridge.yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "bridge.yaml: invalid configuration" in result.stderr
    assert "  sinks.agent.url: not an http(s) URL" in result.stderr
    assert "  shutdown_timeout: not a duration" in result.stderr
    assert "  bogus: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_names_an_unset_variable_and_its_key(tmp_path: Path) -> None:
    data = webhook_only(tmp_path)
    data["openmail"]["webhook"]["secret"] = "${HOOK_SECRET}"
    write(tmp_path / "config.yaml", data)
    result = bridge(tmp_path, "check", "-c", "config.yaml")
    assert result.returncode == 2
    assert "openmail.webhook.secret: environment variable HOOK_SECRET is not set" in result.stderr
    result = bridge(tmp_path, "check", "-c", "config.yaml", env={"HOOK_SECRET": "s3cr3t-hook"})
    assert result.returncode == 0
    assert "s3cr3t-hook" not in result.stdout + result.stderr


def test_check_the_example_config(tmp_path: Path) -> None:
    env = {"OPENMAIL_API_KEY": API_KEY, "OPENMAIL_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "AGENT_WEBHOOK_SECRET": AGENT_SECRET}  # fmt: skip
    result = bridge(tmp_path, "check", "-c", str(REPO / "config.example.yaml"), env=env)
    assert result.returncode == 0, result.stderr
    for secret in env.values():
        assert secret not in result.stdout + result.stderr


def test_check_a_missing_file(tmp_path: Path) -> None:
    result = bridge(tmp_path, "check", "-c", "nope.yaml")
    assert result.returncode == 2
    assert "nope.yaml: cannot read config file: No such file or directory" in result.stderr


# --- -c resolution -----------------------------------------------------------------------------


@pytest.fixture
def two_configs(tmp_path: Path) -> tuple[Path, Path]:
    """``./config.yaml`` (valid, admin port 1111) and ``other.yaml`` (valid, admin port 2222)."""
    here = write(
        tmp_path / "config.yaml", webhook_only(tmp_path, admin={"listen": "127.0.0.1:1111"})
    )
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    other = write(other_dir / "other.yaml",
                  webhook_only(tmp_path, admin={"listen": "127.0.0.1:2222"}))  # fmt: skip
    return here, other


def _admin_port(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["admin"]["listen"])


def test_config_defaults_to_the_environment_variable(
    tmp_path: Path, two_configs: tuple[Path, Path]
) -> None:
    _, other = two_configs
    result = bridge(tmp_path, "check", env={"OPENMAIL_BRIDGE_CONFIG": str(other)})
    assert _admin_port(result) == "127.0.0.1:2222"
    assert f"{other}: configuration is valid" in result.stderr


def test_config_then_defaults_to_config_yaml_here(
    tmp_path: Path, two_configs: tuple[Path, Path]
) -> None:
    result = bridge(tmp_path, "check")
    assert _admin_port(result) == "127.0.0.1:1111"
    assert "config.yaml: configuration is valid" in result.stderr


def test_dash_c_wins_over_the_environment(tmp_path: Path, two_configs: tuple[Path, Path]) -> None:
    here, _ = two_configs
    env = {"OPENMAIL_BRIDGE_CONFIG": str(tmp_path / "broken.yaml")}
    assert _admin_port(bridge(tmp_path, "check", "-c", str(here), env=env)) == "127.0.0.1:1111"


def test_the_environment_wins_over_config_yaml_here(
    tmp_path: Path, two_configs: tuple[Path, Path]
) -> None:
    """A set but wrong $OPENMAIL_BRIDGE_CONFIG is an error, not a silent fall-back."""
    result = bridge(tmp_path, "check", env={"OPENMAIL_BRIDGE_CONFIG": "missing.yaml"})
    assert result.returncode == 2
    assert "missing.yaml: cannot read config file" in result.stderr


@pytest.mark.parametrize(
    ("command", "instead"),
    [
        (("check",), ""),
        (("run",), ""),
        (("nats-status",), ""),
        (("status",), "give --admin URL (and --token, or $OPENMAIL_BRIDGE_ADMIN_TOKEN)"),
        (("events", "list"), "give --state PATH"),
    ],
)
def test_no_config_anywhere_names_every_place_looked_at(
    tmp_path: Path, command: tuple[str, ...], instead: str
) -> None:
    """The places README gives for -c's default, ./config.yaml as the absolute path it was here;
    for a command that can do without a config, how."""
    if Path("/etc/openmail-bridge/config.yaml").exists():
        pytest.skip("this machine has /etc/openmail-bridge/config.yaml")
    result = bridge(tmp_path, *command)
    assert result.returncode == 2
    here = tmp_path.resolve() / "config.yaml"
    assert result.stderr == (
        f"openmail-bridge: no config file found: looked at {here}, "
        "/etc/openmail-bridge/config.yaml ($OPENMAIL_BRIDGE_CONFIG is not set); "
        "give -c FILE or set $OPENMAIL_BRIDGE_CONFIG\n"
    ) + (f"openmail-bridge: to look without the config, {instead}\n" if instead else "")


def test_a_missing_config_named_by_the_environment_says_where_its_name_came_from(
    tmp_path: Path,
) -> None:
    """Only the file $OPENMAIL_BRIDGE_CONFIG names is looked at: the error says it is that one."""
    write(tmp_path / "config.yaml", webhook_only(tmp_path))  # not fallen back to
    for command in (("check",), ("status",)):
        result = bridge(tmp_path, *command, env={"OPENMAIL_BRIDGE_CONFIG": "missing.yaml"})
        assert result.returncode == 2
        assert (
            "openmail-bridge: missing.yaml (from $OPENMAIL_BRIDGE_CONFIG): invalid configuration:"
            in result.stderr
        )


# --- run ---------------------------------------------------------------------------------------


def test_run_with_an_invalid_config_exits_2_before_anything_starts(tmp_path: Path) -> None:
    data = webhook_only(tmp_path, log={"level": "loud"})
    write(tmp_path / "config.yaml", data)
    started = time.monotonic()
    result = bridge(tmp_path, "run", "-c", "config.yaml")
    assert result.returncode == 2
    assert "log.level: 'loud' is not one of" in result.stderr
    assert "bridge.started" not in result.stderr
    assert not (tmp_path / "state").exists(), "no state may be created for an invalid config"
    assert time.monotonic() - started < 30


def _log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """``run`` in a subprocess with a webhook-only config, once it has logged bridge.started."""
    admin_port = free_port()
    config = write(tmp_path / "config.yaml",
                   webhook_only(tmp_path, admin={"listen": f"127.0.0.1:{admin_port}"}))  # fmt: skip
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "-c", str(config)],
            cwd=tmp_path, env=cli_env(HOME=str(tmp_path)),
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "bridge.started" for e in _log_lines(stderr_path)):
            if proc.poll() is not None:
                pytest.fail(f"bridge exited early ({proc.returncode}): {stderr_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no bridge.started within 30s: {stderr_path.read_text()}")
            time.sleep(0.05)
        yield proc, config, stderr_path
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_run_stops_cleanly_on_sigterm(
    running: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    proc, _, stderr_path = running
    assert (tmp_path / "state" / "bridge.db").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    events = [e.get("event") for e in _log_lines(stderr_path)]
    assert "bridge.stopped" in events
    assert events.index("bridge.started") < events.index("bridge.stopped")
    assert "Traceback" not in stderr_path.read_text()


def test_status_of_a_running_bridge(
    running: tuple[subprocess.Popen[bytes], Path, Path], tmp_path: Path
) -> None:
    proc, config, _ = running
    result = bridge(tmp_path, "status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^state: \w+", result.stdout, re.MULTILINE)
    assert "audit (file): delivered 0, pending 0, dead 0" in result.stdout
    result = bridge(tmp_path, "status", "-c", str(config), "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["pid"] == proc.pid
    assert status["sinks"]["audit"]["configured"] is True


# --- status ------------------------------------------------------------------------------------


def test_status_without_a_running_bridge_exits_1(tmp_path: Path) -> None:
    # A bound socket that does not listen: connecting to it is refused, and nothing else can
    # take the port while the test runs.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        write(
            tmp_path / "config.yaml", webhook_only(tmp_path, admin={"listen": f"127.0.0.1:{port}"})
        )
        result = bridge(tmp_path, "status")
        json_result = bridge(tmp_path, "status", "--json")
    for res in (result, json_result):
        assert res.returncode == 1
        assert f"no bridge answers at 127.0.0.1:{port}" in res.stderr
        assert "is it running?" in res.stderr
        assert "Traceback" not in res.stderr
        assert res.stdout == ""


def test_status_with_an_invalid_config_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", webhook_only(tmp_path, admin={"listen": "nowhere"}))
    result = bridge(tmp_path, "status")
    assert result.returncode == 2
    assert "admin.listen: not a host:port address" in result.stderr


# --- route-test --------------------------------------------------------------------------------

ROUTES = [
    {"name": "support", "sinks": ["agent"],
     "match": {"inbox_ids": ["inb_support"], "event_types": ["message.received"]}},
    {"name": "vip", "match": {"from": ["*@x.com"]}, "sinks": ["vip"]},
    {"name": "outbound", "match": {"to": ["*@customer.org", "sales@*"]}, "sinks": ["audit"]},
    {"name": "any-sender", "match": {"from": ["*"]}, "sinks": ["audit"]},
    {"name": "lifecycle", "match": {"event_types": ["inbox.suspended"]}, "sinks": ["ops"]},
    {"name": "everything", "sinks": ["console"]},
]  # fmt: skip


def _event(event_id: str, kind: str, inbox: str, message: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {"event": kind, "event_id": event_id, "occurred_at": "2026-01-01T00:00Z",
                            "inbox_id": inbox}  # fmt: skip
    if message is not None:
        body |= {"thread_id": f"thr_{event_id}", "message": {"id": "msg_1", **message}}
    else:
        body |= {"inbox_address": "support@openmail.sh", "reason": "manual_review"}
    return json.dumps(body)


@pytest.fixture
def routed(tmp_path: Path) -> Path:
    sinks = {
        "agent": {"type": "http", "url": "http://127.0.0.1:3000/h"},
        "vip": {"type": "file", "path": "vip.jsonl"},
        "audit": {"type": "file", "path": "audit.jsonl"},
        "ops": {"type": "file", "path": "ops.jsonl"},
        "console": {"type": "stdout"},
    }
    write(tmp_path / "config.yaml", webhook_only(tmp_path, sinks=sinks, routes=ROUTES))
    (tmp_path / "support.json").write_text(_event(
        "evt_support", "message.received", "inb_support",
        {"from": "Jane Doe <Jane@X.COM>", "to": "support@openmail.sh"},
    ))  # fmt: skip
    (tmp_path / "outbound.json").write_text(_event(
        "evt_out", "message.sent", "inb_other",
        {"from": "bot@openmail.sh", "to": "Ops Team <OPS@Customer.org>"},
    ))  # fmt: skip
    (tmp_path / "lifecycle.json").write_text(
        _event("evt_life", "inbox.suspended", "inb_support", None)
    )
    return tmp_path


@pytest.mark.parametrize(
    ("event", "routes", "sinks"),
    [
        # a display name and mixed case still match *@x.com
        ("support.json", ["support", "vip", "any-sender", "everything"],
         ["agent", "vip", "audit", "console"]),
        ("outbound.json", ["outbound", "any-sender", "everything"], ["audit", "console"]),
        # a lifecycle event has no message: from/to routes, even "*", never match it
        ("lifecycle.json", ["lifecycle", "everything"], ["ops", "console"]),
    ],
)  # fmt: skip
def test_route_test_json(routed: Path, event: str, routes: list[str], sinks: list[str]) -> None:
    result = bridge(routed, "route-test", "-c", "config.yaml", event, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["routes"] == routes
    assert out["sinks"] == sinks


def test_route_test_human(routed: Path) -> None:
    result = bridge(routed, "route-test", "-c", "config.yaml", "support.json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "event evt_support (message.received, inbox inb_support)"
    assert lines[1:] == [
        "  route support: match (inbox_ids, event_types)",
        "  route vip: match (from)",
        "  route outbound: no match (to)",
        "  route any-sender: match (from)",
        "  route lifecycle: no match (event_types)",
        "  route everything: match (no match keys)",
        "  sinks: agent, vip, audit, console",
    ]


def test_route_test_reads_stdin_and_reports_unrouted(routed: Path) -> None:
    data = yaml.safe_load((routed / "config.yaml").read_text())
    data["routes"] = [r for r in data["routes"] if r["name"] == "support"]
    write(routed / "narrow.yaml", data)
    event = _event("evt_other", "message.received", "inb_other", {"from": "a@b.c", "to": "d@e.f"})
    result = bridge(routed, "route-test", "-c", "narrow.yaml", "-", stdin=event)
    assert result.returncode == 0, result.stderr
    assert "  route support: no match" in result.stdout
    assert "sinks: (none: the event would be unrouted)" in result.stdout


def test_route_test_applies_the_guards_and_shows_the_limits(routed: Path) -> None:
    data = yaml.safe_load((routed / "config.yaml").read_text())
    data["sinks"]["hold"] = {"type": "file", "path": "hold.jsonl"}
    data["routes"] = [
        {"name": "support", "sinks": ["agent", "audit"], "match": {"inbox_ids": ["inb_support"]},
         "guard": {"quarantine": "hold", "own_addresses": ["bot@openmail.sh"]},
         "limits": {"per_sender": "2/1h"}},
    ]  # fmt: skip
    write(routed / "guarded.yaml", data)
    bounce = _event("evt_bounce", "message.received", "inb_support",
                    {"from": "MAILER-DAEMON@mx.example", "to": "support@openmail.sh"})  # fmt: skip
    result = bridge(routed, "route-test", "-c", "guarded.yaml", "-", "--json", stdin=bounce)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # The HTTP sink is guarded: a bounce goes to the quarantine sink; the file sink still gets it.
    assert out["guards"] == [
        {"route": "support", "reason": "mailer_daemon", "action": "quarantined"}
    ]
    assert out["sinks"] == ["hold", "audit"]
    assert out["limited"] == [
        {"route": "support", "sinks": ["audit"], "limits": ["per_sender"], "over": "hold"}
    ]
    own = _event("evt_loop", "message.received", "inb_support",
                 {"from": "Bot <BOT@openmail.sh>", "to": "support@openmail.sh"})  # fmt: skip
    result = bridge(routed, "route-test", "-c", "guarded.yaml", "-", stdin=own)
    assert result.returncode == 0, result.stderr
    assert "  guard of route support: loop, quarantined" in result.stdout.splitlines()
    assert "  limits of route support (per_sender): audit while under them, else hold" in (
        result.stdout.splitlines()
    )
    assert result.stdout.splitlines()[-1] == "  sinks: hold, audit"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read"), ("not json", "payload is not JSON"),
     ("[1, 2]", "not an object"), ('{"event": "message.received"}', "no 'event_id'")],
)  # fmt: skip
def test_route_test_with_a_bad_event(routed: Path, content: str | None, message: str) -> None:
    if content is not None:
        (routed / "bad.json").write_text(content)
    result = bridge(routed, "route-test", "-c", "config.yaml", "bad.json")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# --- dlq ---------------------------------------------------------------------------------------


def _dead_letters(db: Path, *event_ids: str) -> None:
    """Accept each event for agent and audit, then dead-letter its agent delivery."""

    async def go() -> None:
        store = await Store.open(db)
        try:
            for event_id in event_ids:
                raw = _event(event_id, "message.received", "inb_1", {"from": "a@x.com", "to": "b"})
                await store.accept(parse_event(raw.encode(), Origin.WEBHOOK), ["agent", "audit"])
            for delivery in await store.pending("agent"):
                await store.dead_letter(delivery.id, error="HTTP 400: bad payload", attempts=3)
        finally:
            await store.close()

    asyncio.run(go())


def _pending(db: Path, sink: str) -> list[str]:
    async def go() -> list[str]:
        store = await Store.open(db)
        try:
            return [d.event_id for d in await store.pending(sink)]
        finally:
            await store.close()

    return asyncio.run(go())


@pytest.fixture
def dlq(tmp_path: Path) -> Path:
    """A config with sinks agent and audit, and a store holding two dead agent deliveries."""
    sinks = {"agent": {"type": "http", "url": "http://127.0.0.1:3000/h"},
             "audit": {"type": "file", "path": "audit.jsonl"}}  # fmt: skip
    write(tmp_path / "config.yaml", webhook_only(tmp_path, sinks=sinks))
    _dead_letters(tmp_path / "state" / "bridge.db", "evt_a", "evt_b")
    return tmp_path


def test_dlq_list(dlq: Path) -> None:
    result = bridge(dlq, "dlq", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, event_id in zip(lines, ["evt_a", "evt_b"], strict=True):
        assert line.split("\t") == [
            "agent", event_id, "message.received", "attempts=3", "HTTP 400: bad payload"
        ]  # fmt: skip
    result = bridge(dlq, "dlq", "list", "--json", "--event-id", "evt_b")
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)
    assert (item["sink"], item["event_id"], item["attempts"]) == ("agent", "evt_b", 3)
    assert item["error"] == "HTTP 400: bad payload"
    result = bridge(dlq, "dlq", "list", "--sink", "audit")
    assert result.stdout.strip() == "no dead letters"


def test_dlq_retry_moves_a_dead_letter_back_to_pending(dlq: Path) -> None:
    db = dlq / "state" / "bridge.db"
    assert _pending(db, "agent") == []
    result = bridge(dlq, "dlq", "retry", "--event-id", "evt_a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 redriven"
    assert _pending(db, "agent") == ["evt_a"]
    assert json.loads(bridge(dlq, "dlq", "list", "--json").stdout)[0]["event_id"] == "evt_b"
    result = bridge(dlq, "dlq", "retry", "--json")
    assert json.loads(result.stdout) == {"retried": 1}
    assert _pending(db, "agent") == ["evt_a", "evt_b"]
    assert bridge(dlq, "dlq", "list").stdout.strip() == "no dead letters"


def test_dlq_purge(dlq: Path) -> None:
    db = dlq / "state" / "bridge.db"
    result = bridge(dlq, "dlq", "purge", "--event-id", "evt_a")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 purged"
    assert [i["event_id"] for i in json.loads(bridge(dlq, "dlq", "list", "--json").stdout)] == [
        "evt_b"
    ]
    result = bridge(dlq, "dlq", "purge", "--all", "--json")  # every dead letter
    assert json.loads(result.stdout) == {"purged": 1}
    assert bridge(dlq, "dlq", "list").stdout.strip() == "no dead letters"
    # purge touches dead rows only: the audit deliveries are still pending
    assert _pending(db, "audit") == ["evt_a", "evt_b"]
    assert _pending(db, "agent") == []


def _conflict(db: Path, event_id: str, inbox: str) -> None:
    """Accept ``event_id`` for another inbox than it was first seen with: a quarantined conflict."""

    async def go() -> None:
        store = await Store.open(db)
        try:
            raw = _event(event_id, "message.received", inbox, {"from": "a@x.com", "to": "b"})
            result = await store.accept(parse_event(raw.encode(), Origin.WEBSOCKET), ["agent"])
            assert result.quarantined
        finally:
            await store.close()

    asyncio.run(go())


def test_dlq_list_shows_quarantined_events_with_their_reason(dlq: Path) -> None:
    _conflict(dlq / "state" / "bridge.db", "evt_b", "inb_other")
    result = bridge(dlq, "dlq", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines[:2]] == [["agent", "evt_a"], ["agent", "evt_b"]]
    assert lines[2:] == [
        "quarantined, never delivered (1):",
        "quarantine\tevt_b\tmessage.received\tinbox_mismatch\tsource=websocket",
    ]
    # --json keeps its shape, a list of dead letters; --quarantine lists the quarantine alone.
    assert [i["event_id"] for i in json.loads(bridge(dlq, "dlq", "list", "--json").stdout)] == [
        "evt_a",
        "evt_b",
    ]
    result = bridge(dlq, "dlq", "list", "--quarantine", "--json", "--event-id", "evt_b")
    (item,) = json.loads(result.stdout)
    assert (item["event_id"], item["reason"], item["inbox_id"], item["source"]) == (
        "evt_b",
        "inbox_mismatch",
        "inb_other",
        "websocket",
    )
    assert item["payload_kept"] is True
    assert len(item["content_id"]) == 64
    # A sink has no quarantined events.
    assert "quarantine" not in bridge(dlq, "dlq", "list", "--sink", "agent").stdout
    assert bridge(dlq, "dlq", "list", "--quarantine", "--event-id", "evt_a").stdout == (
        "no quarantined events\n"
    )


def test_dlq_purge_quarantine(dlq: Path) -> None:
    db = dlq / "state" / "bridge.db"
    _conflict(db, "evt_a", "inb_other")
    _conflict(db, "evt_b", "inb_other")
    result = bridge(dlq, "dlq", "retry", "--quarantine")
    assert result.returncode == 2
    assert "never delivered" in result.stderr
    assert bridge(dlq, "dlq", "purge", "--quarantine", "--sink", "agent").returncode == 2

    result = bridge(dlq, "dlq", "purge", "--quarantine", "--event-id", "evt_a")
    assert (result.returncode, result.stdout.strip()) == (0, "1 purged")
    listed = json.loads(bridge(dlq, "dlq", "list", "--quarantine", "--json").stdout)
    assert [i["event_id"] for i in listed] == ["evt_b"]
    result = bridge(dlq, "dlq", "purge", "--quarantine", "--all", "--json")
    assert json.loads(result.stdout) == {"purged": 1}
    assert bridge(dlq, "dlq", "list", "--quarantine").stdout.strip() == "no quarantined events"
    # Dead letters and pending rows are untouched.
    assert [i["event_id"] for i in json.loads(bridge(dlq, "dlq", "list", "--json").stdout)] == [
        "evt_a",
        "evt_b",
    ]
    assert _pending(db, "audit") == ["evt_a", "evt_b"]


def test_dlq_help_documents_the_quarantine(tmp_path: Path) -> None:
    result = bridge(tmp_path, "dlq", "--help")
    assert result.returncode == 0
    assert "--quarantine" in result.stdout
    assert "never delivered" in " ".join(result.stdout.split())


def test_dlq_with_an_invalid_state_path_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "config.yaml", webhook_only(tmp_path, state={"path": "${NO_SUCH_VAR}"}))
    result = bridge(tmp_path, "dlq", "list")
    assert result.returncode == 2
    assert "state.path: environment variable NO_SUCH_VAR is not set" in result.stderr
