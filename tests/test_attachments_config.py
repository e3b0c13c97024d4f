"""The ``attachments`` option of an HTTP sink and ``openmail.api_url``: what ``check`` refuses and
explains by key path, and what the loader binds into the option."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.attachments.settings import AttachmentsConfig
from bridge.config import Config, OpenMailConfig, WebSocketConfig, config_warnings, describe
from bridge.sinks.http import HttpSinkOptions
from tests.test_cli import cli_env
from tests.test_config import load, merged, problems

KEY = "om_test_attachments_7a6b5c"

# Webhook only: the API key is not needed for receiving here, only for the attachments.
WEBHOOK_ONLY: dict[str, Any] = {
    "openmail": {
        "websocket": {"enabled": False},
        "webhook": {"listen": "127.0.0.1:0", "secret": "whsec-attachments-1"},
    },
    "sinks": {
        "agent": {
            "type": "http",
            "url": "http://127.0.0.1:3000/webhooks",
            "attachments": {"fetch": True},
        }
    },
}


def run_check(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """The real ``openmail-bridge check`` on ``data`` written to a file."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data))
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", "-c", str(tmp_path / "config.yaml")],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )


def attachments_of(config: Config, sink: str = "agent") -> AttachmentsConfig:
    options = config.sinks[sink].options
    assert isinstance(options, HttpSinkOptions)
    return options.attachments


def test_fetching_needs_the_api_key_even_with_the_websocket_off(tmp_path: Path) -> None:
    assert problems(tmp_path, WEBHOOK_ONLY) == [
        "sinks.agent.attachments.fetch: needs openmail.api_key: attachments are downloaded "
        "with it (also while openmail.websocket and openmail.webhook are disabled)"
    ]
    off = merged(WEBHOOK_ONLY, {"sinks": {"agent": {"attachments": {"fetch": False}}}})
    assert attachments_of(load(tmp_path, off)) == AttachmentsConfig()


def test_the_loader_binds_the_api_and_the_state_directory(tmp_path: Path) -> None:
    data = merged(WEBHOOK_ONLY, {"openmail": {"api_key": KEY}, "state": {"path": "st/b.db"}})
    option = attachments_of(load(tmp_path, data))
    assert option.dir == tmp_path / "st" / "attachments"
    assert option.api_url == "https://api.openmail.sh"
    assert option.api_key is not None
    assert option.api_key.get() == KEY
    assert option.min_free == 256 << 20
    assert (option.max_bytes, option.max_total) == (25 << 20, 1 << 30)
    assert (option.timeout, option.retention) == (30.0, 7 * 86400.0)


def test_a_relative_dir_is_the_config_files_and_sizes_read_with_units(tmp_path: Path) -> None:
    given = {"fetch": True, "dir": "./files", "max_bytes": "1MiB", "max_total": "3MiB"}
    data = merged(
        WEBHOOK_ONLY,
        {
            "openmail": {"api_key": KEY, "api_url": "http://127.0.0.1:8025/v1"},
            "state": {"min_free": "1GiB"},
            "sinks": {"agent": {"attachments": {**given, "timeout": "2s", "retention": "1d"}}},
        },
    )
    option = attachments_of(load(tmp_path, data))
    assert option.dir == tmp_path / "files"
    assert option.api_url == "http://127.0.0.1:8025/v1"
    assert (option.max_bytes, option.max_total, option.min_free) == (1 << 20, 3 << 20, 1 << 30)
    assert (option.timeout, option.retention) == (2.0, 86400.0)


@pytest.mark.parametrize(
    ("ws_url", "api"),
    [
        ("wss://api.openmail.sh/v1/ws", "https://api.openmail.sh"),
        ("ws://127.0.0.1:8025/v1/ws", "http://127.0.0.1:8025"),
        ("wss://user:pw@[::1]:9443/deep/path?x=1", "https://[::1]:9443"),
    ],
)
def test_the_api_url_defaults_to_the_websocket_origin(ws_url: str, api: str) -> None:
    openmail = OpenMailConfig(websocket=WebSocketConfig(url=ws_url))
    assert openmail.api_base == api
    assert OpenMailConfig(
        api_url="https://other.example", websocket=openmail.websocket
    ).api_base == ("https://other.example")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"openmail": {"api_url": "https://u:p@api.openmail.sh"}},
            "openmail.api_url: must not carry user-info (user:password@)",
        ),
        ({"openmail": {"api_url": "wss://api.openmail.sh"}}, "openmail.api_url: not an http(s)"),
        (
            {"sinks": {"agent": {"attachments": {"max_bytes": "2MiB", "max_total": "1MiB"}}}},
            "sinks.agent.attachments.max_total: is 1048576 bytes, less than max_bytes (2097152)",
        ),
        (
            {"sinks": {"agent": {"attachments": {"max_bytes": 0}}}},
            "sinks.agent.attachments.max_bytes: must be at least 1 byte",
        ),
        (
            {"sinks": {"agent": {"attachments": {"timeout": "0s"}}}},
            "sinks.agent.attachments.timeout: must be more than 0s",
        ),
        (
            {"sinks": {"agent": {"attachments": {"retention": "0s"}}}},
            "sinks.agent.attachments.retention: must be more than 0s",
        ),
        (
            {"sinks": {"agent": {"attachments": {"fetc": True}}}},
            "sinks.agent.attachments.fetc: unknown key (did you mean 'fetch'?)",
        ),
        (
            {"sinks": {"agent": {"attachments": {"api_key": "x"}}}},
            "sinks.agent.attachments.api_key: unknown key",
        ),
        (
            {"sinks": {"agent": {"attachments": {"dir": "./a-file/attachments"}}}},
            "sinks.agent.attachments.dir: ",
        ),
    ],
)
def test_check_names_each_problem_by_its_key(
    tmp_path: Path, override: dict[str, Any], expected: str
) -> None:
    (tmp_path / "a-file").write_text("a file, not a directory")
    data = merged(merged(WEBHOOK_ONLY, {"openmail": {"api_key": KEY}}), override)
    found = problems(tmp_path, data)
    assert len(found) == 1, found
    assert found[0].startswith(expected), found


def test_check_prints_the_option_without_the_key(tmp_path: Path) -> None:
    done = run_check(tmp_path, merged(WEBHOOK_ONLY, {"openmail": {"api_key": KEY}}))
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)["sinks"]["agent"]["attachments"]
    assert shown == {
        "fetch": True,
        "dir": str(tmp_path / "state" / "attachments"),
        "max_bytes": 25 << 20,
        "max_total": 1 << 30,
        "timeout": 30.0,
        "retention": 7 * 86400.0,
    }
    assert KEY not in done.stdout + done.stderr
    assert json.loads(done.stdout)["openmail"]["api_url"] is None


def test_describe_never_shows_the_bound_key(tmp_path: Path) -> None:
    config = load(tmp_path, merged(WEBHOOK_ONLY, {"openmail": {"api_key": KEY}}))
    assert KEY not in json.dumps(describe(config))


def test_check_refuses_a_missing_key_with_exit_status_and_key_path(tmp_path: Path) -> None:
    done = run_check(tmp_path, WEBHOOK_ONLY)
    assert done.returncode != 0
    assert "sinks.agent.attachments.fetch: needs openmail.api_key" in done.stderr


@pytest.mark.parametrize(
    ("api_url", "warned"),
    [("http://api.example.com", True), ("http://127.0.0.1:8025", False), ("https://x.io", False)],
)
def test_a_cleartext_api_url_off_this_host_is_warned_about(
    tmp_path: Path, api_url: str, warned: bool
) -> None:
    data = merged(WEBHOOK_ONLY, {"openmail": {"api_key": KEY, "api_url": api_url}})
    keys = [w.key for w in config_warnings(load(tmp_path, data))]
    assert ("openmail.api_url" in keys) is warned
