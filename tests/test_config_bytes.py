"""A config file that cannot be read as text, or is no file at all, is a configuration error like
any other: every command says which file and where (exit 2), the commands that can do without a
config go on without an unusable default one, and a reload rejects it the usual way. Errors are
shown with their control characters escaped.

Real files under tmp_path; the commands run as users run them, in a subprocess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import load_config, read_operator_config
from bridge.errors import ConfigError
from bridge.sinks import SINK_TYPES
from bridge.store import Store
from tests.conftest import bridge_config_dict, free_port, running_bridge, write_config
from tests.test_cli import bridge

LATIN1 = b"# caf\xe9\nsinks: {a: {type: stdout}}\n"
"""A config saved as Latin-1: the \xe9 of "cafe" is no UTF-8."""
WHERE = "not UTF-8 text at line 1, column 6 (byte offset 5): save the file as UTF-8"


def latin1_config(directory: Path, name: str = "bad.yaml") -> Path:
    path = directory / name
    path.write_bytes(LATIN1)
    return path


def event_file(directory: Path) -> Path:
    path = directory / "event.json"
    body = {"event": "message.received", "event_id": "evt_1", "inbox_id": "inb_1"}
    path.write_text(json.dumps(body))
    return path


# --- what the loader says ------------------------------------------------------------------------


def test_bytes_that_are_not_utf8_are_named_by_line_column_and_offset(tmp_path: Path) -> None:
    path = latin1_config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(path, sink_types=SINK_TYPES, env={})
    assert caught.value.problems == [f"{path}: {WHERE}"]


def test_the_column_counts_characters_and_the_bytes_are_never_shown(tmp_path: Path) -> None:
    # Two two-byte characters before the bad byte: column 18, byte offset 24. The bytes
    # around it are a secret's, and stay out of the message.
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: 1\n  api_key: \xc3\xa9\xc3\xa9s3cr\xffet\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, sink_types=SINK_TYPES, env={})
    (problem,) = caught.value.problems
    assert problem == (
        f"{path}: not UTF-8 text at line 2, column 18 (byte offset 24): save the file as UTF-8"
    )
    assert "s3cr" not in problem


def test_a_character_cut_short_at_the_end_is_found(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"a: \xc3")
    with pytest.raises(ConfigError, match=r"line 1, column 4 \(byte offset 3\)"):
        load_config(path, sink_types=SINK_TYPES, env={})


def test_the_lenient_reader_of_the_operator_commands_says_the_same(tmp_path: Path) -> None:
    path = latin1_config(tmp_path)
    with pytest.raises(ConfigError) as caught:
        read_operator_config(path, env={})
    assert caught.value.problems == [f"{path}: {WHERE}"]


def test_a_directory_is_no_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_config(path, sink_types=SINK_TYPES, env={})
    assert caught.value.problems == [
        f"{path}: cannot read config file: it is a directory, not a regular file"
    ]


@pytest.mark.timeout(20)  # the bug this guards against is a read that never returns
def test_a_fifo_is_refused_at_once_rather_than_waited_on(tmp_path: Path) -> None:
    # No one writes to it: opening it to read would wait for ever, and a reload reads the
    # file on the event loop.
    path = tmp_path / "config.yaml"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as caught:
        load_config(path, sink_types=SINK_TYPES, env={})
    assert caught.value.problems == [
        f"{path}: cannot read config file: it is a FIFO (named pipe), not a regular file"
    ]


# --- every command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("check",),
        ("run",),
        ("status",),
        ("dlq", "list"),
        ("events", "list"),
        ("tail",),
        ("trigger", "--sink", "a"),
        ("route-test", "{event}"),
        ("nats-status",),
    ],
    ids=lambda args: args[0],
)
def test_every_command_names_the_file_and_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    config = latin1_config(tmp_path)
    event = event_file(tmp_path)
    result = bridge(tmp_path, *(a.format(event=event) for a in args), "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"  {config}: {WHERE}" in result.stderr.splitlines()


async def test_config_free_commands_go_on_without_an_unusable_default_file(
    tmp_path: Path,
) -> None:
    latin1_config(tmp_path, "config.yaml")
    database = tmp_path / "bridge.db"
    store = await Store.open(database)
    await store.close()
    for args in (("dlq", "list"), ("events", "list")):
        result = bridge(tmp_path, *args, "--state", str(database))
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr
    # Nothing listens there: the command gets as far as asking, which needs no config.
    result = bridge(tmp_path, "status", "--admin", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1, result.stderr
    assert "no bridge answers" in result.stderr
    assert "Traceback" not in result.stderr


# --- reload ----------------------------------------------------------------------------------


async def test_a_reload_that_finds_undecodable_bytes_is_rejected_and_the_bridge_runs_on(
    tmp_path: Path,
) -> None:
    data: dict[str, Any] = bridge_config_dict(tmp_path)
    path = write_config(tmp_path / "config.yaml", data)
    config = load_config(path, sink_types=SINK_TYPES)
    async with running_bridge(config) as sv:
        path.write_bytes(LATIN1)  # saved by an editor in another encoding
        with structlog.testing.capture_logs() as logs:
            assert await sv.reload() is False
        (rejected,) = [e for e in logs if e["event"] == "config.reload_rejected"]
        assert rejected["errors"] == [f"{path}: {WHERE}"]
        assert sv.config is config
        assert (sv.last_reload["result"], sv.last_reload["errors"]) == (
            "rejected",
            [f"{path}: {WHERE}"],
        )
        sample = sv.metrics.registry.get_sample_value(
            "openmail_bridge_config_reloads_total", {"result": "invalid"}
        )
        assert sample == 1


# --- shown escaped -----------------------------------------------------------------------------


def test_check_shows_a_control_character_of_the_file_escaped(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        'openmail: {websocket: {enabled: false}, webhook: {secret: "x"}}\n'
        'sinks: {"a\\e]52;c;aGk=\\a": {type: stdout}}\n'  # OSC 52: writes the clipboard
    )
    result = bridge(tmp_path, "check", "-c", str(config))
    assert result.returncode == 2, result.stderr
    assert "\x1b" not in result.stderr
    assert "\x07" not in result.stderr
    assert "  sinks.a\\x1b]52;c;aGk=\\x07: sink names may use letters" in result.stderr


def test_a_config_file_name_is_shown_escaped(tmp_path: Path) -> None:
    result = bridge(tmp_path, "check", "-c", "\x1b[2Jgone.yaml")
    assert result.returncode == 2, result.stderr
    assert "\x1b" not in result.stderr
    assert "\\x1b[2Jgone.yaml: cannot read config file: No such file" in result.stderr
