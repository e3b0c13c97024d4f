"""bridge.config: the schema of the config-file contract, ${VAR} interpolation, secrets, paths, and
errors named by key path -- all of them at once, never a traceback."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import (
    Config,
    Listen,
    Secret,
    build_config,
    describe,
    load_config,
    parse_duration,
    parse_listen,
    parse_size,
)
from bridge.errors import ConfigError
from bridge.sinks import SINK_TYPES
from bridge.sinks.file import FileSinkOptions
from bridge.sinks.http import HttpSinkOptions

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"
DROP = object()
"""In an override: remove this key from the base config."""

API_KEY = "om_test_key_1f2e3d"
WEBHOOK_SECRET = "whsec-base-9a8b7c"
AGENT_SECRET = "agent-secret-5d6e7f"

# A valid config in the schema; each broken case below changes one thing in it.
BASE: dict[str, Any] = {
    "openmail": {
        "api_key": API_KEY,
        "webhook": {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET},
    },
    "sinks": {
        "agent": {"type": "http", "url": "http://127.0.0.1:3000/webhooks", "secret": AGENT_SECRET},
        "audit": {"type": "file", "path": "./events.jsonl"},
        "console": {"type": "stdout"},
    },
    "routes": [
        {
            "name": "support",
            "match": {"inbox_ids": ["inb_1"], "event_types": ["message.received"]},
            "sinks": ["agent", "audit"],
        },
        {"name": "everything", "sinks": ["console"]},
    ],
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if value is DROP:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def write(directory: Path, data: dict[str, Any] | str, name: str = "config.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def load(tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, data), sink_types=SINK_TYPES, env=env or {})


def problems(
    tmp_path: Path, data: dict[str, Any] | str, env: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, data, env)
    return info.value.problems


# --- the example config ------------------------------------------------------------------------


def example_variables() -> set[str]:
    """The ${VAR} names config.example.yaml uses outside comments."""
    names = set()
    for line in EXAMPLE.read_text().splitlines():
        code = line.split("#", 1)[0]
        names |= set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", code))
    return names


def test_example_config_needs_exactly_the_variables_its_header_names() -> None:
    header = EXAMPLE.read_text().split("\n\n", 1)[0]
    assert example_variables() == {"OPENMAIL_API_KEY", "OPENMAIL_WEBHOOK_SECRET",
                                   "AGENT_WEBHOOK_SECRET"}  # fmt: skip
    for name in example_variables():
        assert name in header, f"the header comment does not tell the reader to set {name}"


def test_example_config_is_valid_with_its_variables_set() -> None:
    env = {name: f"value-of-{name.lower()}" for name in example_variables()}
    config = load_config(EXAMPLE, sink_types=SINK_TYPES, env=env)
    assert config.openmail.api_key == Secret("value-of-openmail_api_key")
    assert config.openmail.webhook.secret == Secret("value-of-openmail_webhook_secret")
    assert list(config.sinks) == ["agent", "audit", "console"]
    assert [r.name for r in config.routes] == ["support", "everything"]
    assert config.routes[0].sinks == ("agent", "audit")
    audit = config.sinks["audit"].options
    assert isinstance(audit, FileSinkOptions)
    assert audit.path == REPO / "events.jsonl"  # relative to the example's directory
    assert config.openmail.webhook.max_body == 10 * 1024 * 1024
    assert config.state.dedup_window == 7 * 86400
    assert config.source == EXAMPLE


def _check_example(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A subprocess, not cli.main(): the CLI configures process-wide logging.
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", "-c", str(EXAMPLE)],
        env={k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_accepts_the_example_config() -> None:
    """The issue's "done when": ``openmail-bridge check -c config.example.yaml`` exits 0."""
    result = _check_example({name: f"secret-value-{name}" for name in example_variables()})
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stderr
    shown = json.loads(result.stdout)
    assert shown["openmail"]["api_key"] == "***"
    for name in example_variables():
        assert f"secret-value-{name}" not in result.stdout + result.stderr


def test_check_rejects_the_example_config_naming_each_unset_variable() -> None:
    result = _check_example({})
    assert result.returncode == 2
    err = result.stderr
    assert "openmail.api_key: environment variable OPENMAIL_API_KEY is not set" in err
    assert "openmail.webhook.secret: environment variable OPENMAIL_WEBHOOK_SECRET" in err
    assert "sinks.agent.secret: environment variable AGENT_WEBHOOK_SECRET" in err


def test_the_base_config_of_these_tests_is_valid(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    assert config.openmail.webhook.listen == Listen("127.0.0.1", 0)


# --- broken configs: each error names its key path -------------------------------------------

BROKEN: list[tuple[str, dict[str, Any], dict[str, str], str, str]] = [
    # (id, override of BASE, env, the key path named, a fragment of its message)
    ("unknown top-level key", {"bogus": 1}, {}, "bogus", "unknown key"),
    ("unknown nested key, with a suggestion",
     {"openmail": {"webhook": {"tolerence": "5m"}}}, {},
     "openmail.webhook.tolerence", "unknown key (did you mean 'tolerance'?)"),
    ("unknown sink option", {"sinks": {"console": {"colour": "red"}}}, {},
     "sinks.console.colour", "unknown key"),
    ("wrong type: boolean", {"admin": {"enabled": "maybe"}}, {},
     "admin.enabled", "expected true or false"),
    ("wrong type: list for a string", {"openmail": {"webhook": {"path": ["/a"]}}}, {},
     "openmail.webhook.path", "expected a string, got a list"),
    ("wrong type: mapping for a list", {"openmail": {"websocket": {"inbox_ids": {"a": 1}}}}, {},
     "openmail.websocket.inbox_ids", "expected a list"),
    ("wrong type: section is a list", {"state": ["x"]}, {}, "state", "expected a mapping"),
    ("wrong type: whole number", {"sinks": {"console": {"concurrency": "four"}}}, {},
     "sinks.console.concurrency", "must be a whole number, at least 1, got 'four'"),
    ("not one of the choices", {"log": {"level": "loud"}}, {},
     "log.level", "'loud' is not one of: debug, info, warning, error"),
    ("missing required value", {"sinks": {"agent": {"url": DROP}}}, {},
     "sinks.agent.url", "is required"),
    ("missing route name", {"routes": [{"sinks": ["console"]}]}, {},
     "routes[0].name", "is required"),
    ("route naming a missing sink",
     {"routes": [{"name": "support", "sinks": ["agent", "nope"]}]}, {},
     "routes[0] (support).sinks[1]", "no sink named 'nope' (sinks: agent, audit, console)"),
    ("duplicate route name",
     {"routes": [{"name": "r", "sinks": ["agent"]}, {"name": "r", "sinks": ["audit"]}]}, {},
     "routes[1] (r).name", "duplicate route name 'r'"),
    ("route match key of the wrong type",
     {"routes": [{"name": "r", "sinks": ["agent"], "match": {"from": "*@x.com"}}]}, {},
     "routes[0] (r).match.from", "expected a list"),
    ("unknown sink type", {"sinks": {"queue": {"type": "kafka"}}}, {},
     "sinks.queue.type", "unknown sink type 'kafka' (known: http, file, stdout, nats)"),
    ("sink without a type", {"sinks": {"queue": {"path": "x"}}}, {},
     "sinks.queue.type", "is required"),
    ("no sinks at all", {"sinks": None, "routes": DROP}, {}, "sinks", "at least one sink"),
    ("bad http url", {"sinks": {"agent": {"url": "ftp://127.0.0.1/x"}}}, {},
     "sinks.agent.url", "not an http(s) URL"),
    ("bad websocket url", {"openmail": {"websocket": {"url": "https://api.openmail.sh"}}}, {},
     "openmail.websocket.url", "not a ws(s) URL"),
    ("unset ${VAR} names the variable", {"openmail": {"webhook": {"secret": "${HOOK_SECRET}"}}},
     {}, "openmail.webhook.secret", "environment variable HOOK_SECRET is not set"),
    ("${VAR:?message} shows the message",
     {"openmail": {"api_key": "${OM_KEY:?get one at openmail.sh}"}}, {},
     "openmail.api_key", "get one at openmail.sh"),
    ("${VAR:?message} also fails on an empty variable",
     {"openmail": {"api_key": "${OM_KEY:?get one}"}}, {"OM_KEY": ""},
     "openmail.api_key", "get one"),
    ("empty api key from the environment", {"openmail": {"api_key": "${OM_KEY}"}},
     {"OM_KEY": ""}, "openmail.api_key", "is empty"),
    ("empty webhook secret", {"openmail": {"webhook": {"secret": ""}}}, {},
     "openmail.webhook.secret", "is empty (an empty secret would accept anything)"),
    ("blank sink secret", {"sinks": {"agent": {"secret": "   "}}}, {},
     "sinks.agent.secret", "is empty"),
    ("api key missing while the websocket is enabled", {"openmail": {"api_key": DROP}}, {},
     "openmail.api_key", "is required while openmail.websocket.enabled is true"),
    ("webhook secret missing while the webhook is enabled",
     {"openmail": {"webhook": {"secret": DROP}}}, {},
     "openmail.webhook.secret", "is required while openmail.webhook.enabled is true"),
    ("both sources disabled",
     {"openmail": {"websocket": {"enabled": False}, "webhook": {"enabled": False}}}, {},
     "openmail", "both websocket and webhook are disabled"),
    ("bad duration", {"openmail": {"webhook": {"tolerance": "5 minutes"}}}, {},
     "openmail.webhook.tolerance", "not a duration such as 500ms, 20s, 5m, 24h or 7d"),
    ("duration without a unit", {"shutdown_timeout": 10}, {},
     "shutdown_timeout", "10 has no unit; write e.g. 10s or 10ms"),
    ("bad nested duration", {"sinks": {"agent": {"retry": {"max": "soon"}}}}, {},
     "sinks.agent.retry.max", "not a duration"),
    ("bad size", {"state": {"max_bytes": "12 bananas"}}, {},
     "state.max_bytes", "not a size such as 64KiB or 10MiB"),
    ("bad listen address", {"admin": {"listen": "localhost"}}, {},
     "admin.listen", "not a host:port address"),
    ("listen port out of range", {"openmail": {"webhook": {"listen": "127.0.0.1:70000"}}}, {},
     "openmail.webhook.listen", "port 70000 is out of range"),
    ("webhook path without a slash", {"openmail": {"webhook": {"path": "hooks"}}}, {},
     "openmail.webhook.path", "must start with '/'"),
    ("both a secret and its _file", {"openmail": {"webhook": {"secret_file": "s.txt"}}}, {},
     "openmail.webhook.secret", "give either secret or secret_file, not both"),
    ("secret file missing",
     {"openmail": {"webhook": {"secret": DROP, "secret_file": "missing.txt"}}}, {},
     "openmail.webhook.secret_file", "No such file or directory"),
    ("an empty per-inbox secret",
     {"openmail": {"webhook": {"secret": DROP, "secrets": {"inb_1": "x", "inb_2": ""}}}}, {},
     "openmail.webhook.secrets.inb_2", "is empty"),
    ("secrets neither list nor map", {"openmail": {"webhook": {"secrets": 5}}}, {},
     "openmail.webhook.secrets", "a list of secrets or a map inbox_id -> secret"),
    ("concurrency below 1", {"sinks": {"console": {"concurrency": 0}}}, {},
     "sinks.console.concurrency", "must be a whole number, at least 1, got 0"),
    ("max_in_flight beyond the replay limit",
     {"openmail": {"websocket": {"max_in_flight": 500}}}, {},
     "openmail.websocket.max_in_flight",
     "must be a whole number between 1 and 100 (OpenMail replays at most that many), got 500"),
    ("sink name with a space", {"sinks": {"my sink": {"type": "stdout"}}}, {},
     "sinks.my sink", "letters, digits"),
    ("whsec_ secret that is not base64",
     {"sinks": {"agent": {"secret": "whsec_!!!", "signature": "standard-webhooks"}}}, {},
     "sinks.agent.secret", "base64"),
    ("retry max under initial", {"sinks": {"agent": {"retry": {"initial": "10s", "max": "5s"}}}},
     {}, "sinks.agent.retry.max", "not be less than retry.initial"),
    ("retry initial zero", {"sinks": {"agent": {"retry": {"initial": "0s"}}}}, {},
     "sinks.agent.retry.initial", "more than 0"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "env", "path", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BROKEN],
)
def test_broken_config_names_the_key_path(
    tmp_path: Path, override: dict[str, Any], env: dict[str, str], path: str, fragment: str
) -> None:
    found = problems(tmp_path, merged(BASE, override), env)
    assert len(found) == 1, f"expected one problem, got {found}"
    assert found[0].startswith(f"{path}: "), found[0]
    assert fragment in found[0]


def test_a_dozen_broken_configs_at_least() -> None:
    assert len(BROKEN) >= 12
    assert len({case[0] for case in BROKEN}) == len(BROKEN)


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    data = merged(BASE, {
        "bogus": True,
        "shutdown_timeout": "forever",
        "routes": [{"name": "r", "sinks": ["nope"]}],
    })  # fmt: skip
    found = problems(tmp_path, data)
    assert sorted(p.split(": ", 1)[0] for p in found) == [
        "bogus", "routes[0] (r).sinks[0]", "shutdown_timeout"
    ]  # fmt: skip


def test_errors_across_sections_are_all_reported(tmp_path: Path) -> None:
    data = merged(BASE, {
        "openmail": {"api_key": "${NOPE}", "webhook": {"tolerance": "x", "listen": "y"}},
        "state": {"max_bytes": "z"},
        "sinks": {"agent": {"url": "nope"}, "extra": {"type": "kafka"}},
    })  # fmt: skip
    paths = {p.split(": ", 1)[0] for p in problems(tmp_path, data)}
    assert paths == {
        "openmail.api_key", "openmail.webhook.tolerance", "openmail.webhook.listen",
        "state.max_bytes", "sinks.agent.url", "sinks.extra.type",
    }  # fmt: skip


def test_config_error_message_lists_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, merged(BASE, {"a": 1, "b": 2}))
    assert str(info.value).splitlines() == ["a: unknown key", "b: unknown key"]


def test_unknown_key_never_suggests_an_internal_field(tmp_path: Path) -> None:
    # ``Config.source`` is set by the loader, not by the file.
    (found,) = problems(tmp_path, merged(BASE, {"sources": {}}))
    assert found.startswith("sources: unknown key")
    assert "source'" not in found


def test_a_bad_secrets_list_is_one_problem_not_two(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"webhook": {"secret": DROP, "secrets": ["ok", ""]}}})
    assert problems(tmp_path, data) == [
        "openmail.webhook.secrets[1]: is empty (an empty secret would accept anything)"
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[]", "<top>: expected a mapping of sections, got a list"),
        ("just words", "<top>: expected a mapping of sections"),
        ("a: [1, 2", "<yaml>: not valid YAML at line"),
    ],
)
def test_a_file_that_is_not_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    (found,) = problems(tmp_path, text)
    assert found.startswith(fragment)


def test_an_empty_file_asks_for_the_required_parts(tmp_path: Path) -> None:
    found = problems(tmp_path, "")
    assert {p.split(": ", 1)[0] for p in found} == {
        "sinks", "openmail.api_key", "openmail.webhook.secret"
    }  # fmt: skip


def test_an_unreadable_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml", sink_types=SINK_TYPES, env={})
    assert info.value.problems == [
        f"{tmp_path / 'absent.yaml'}: cannot read config file: No such file or directory"
    ]
    with pytest.raises(ConfigError, match="no config file given"):
        load_config(None, sink_types=SINK_TYPES, env={})


# --- inputs that once escaped as bare exceptions ----------------------------------------------


@pytest.mark.parametrize(
    ("override", "path", "fragment"),
    [
        ({"sinks": {"console": {"concurrency": "\u00b2"}}}, "sinks.console.concurrency",
         "must be a whole number"),
        ({"admin": {"listen": "127.0.0.1:\u00b2"}}, "admin.listen", "not a host:port"),
        ({"state": {"max_bytes": "9" * 400 + "KiB"}}, "state.max_bytes", "too large"),
        ({"shutdown_timeout": "9" * 400 + "s"}, "shutdown_timeout", "too large"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout", "not a duration"),
        ({"state": {"path": "~no-such-user-for-bridge-tests/db"}}, "state.path",
         "no such user"),
        ({"state": {"path": "a\x00b"}}, "state.path", "NUL"),
        ({"sinks": {"agent": {"url": "http://[x"}}}, "sinks.agent.url", "not an http(s) URL"),
        ({"sinks": {"agent": {"url": "http://x:99999/"}}}, "sinks.agent.url", "not an http(s)"),
        ({"openmail": {"websocket": {"url": "ws://[::1"}}}, "openmail.websocket.url",
         "not a ws(s) URL"),
    ],
)  # fmt: skip
def test_odd_values_are_config_errors(
    tmp_path: Path, override: dict[str, Any], path: str, fragment: str
) -> None:
    (found,) = problems(tmp_path, merged(BASE, override))
    assert found.startswith(f"{path}: ")
    assert fragment in found


def test_a_secret_file_that_is_not_text(tmp_path: Path) -> None:
    (tmp_path / "key.bin").write_bytes(b"\xff\xfe\x00binary")
    data = merged(BASE, {"openmail": {"api_key": DROP, "api_key_file": "key.bin"}})
    assert problems(tmp_path, data) == [
        f"openmail.api_key_file: cannot read {tmp_path / 'key.bin'}: not UTF-8 text"
    ]


def test_a_var_file_that_is_not_text(tmp_path: Path) -> None:
    (tmp_path / "key.bin").write_bytes(b"\xff\xfe")
    data = merged(BASE, {"openmail": {"api_key": "${OM_KEY}"}})
    (found,) = problems(tmp_path, data, {"OM_KEY_FILE": str(tmp_path / "key.bin")})
    assert found.startswith("openmail.api_key: cannot read OM_KEY_FILE=")
    assert found.endswith("not UTF-8 text")


# --- ${VAR} interpolation ----------------------------------------------------------------------


def test_variables_are_interpolated_in_any_string(tmp_path: Path) -> None:
    data = merged(BASE, {
        "shutdown_timeout": "${GRACE}",
        "openmail": {"api_key": "${OM_KEY}", "webhook": {"listen": "127.0.0.1:${PORT}"}},
        "sinks": {"agent": {"url": "http://${AGENT_HOST}/webhooks"}},
    })  # fmt: skip
    env = {"GRACE": "500ms", "OM_KEY": "om_live_x", "PORT": "8081", "AGENT_HOST": "agent:3000"}
    config = load(tmp_path, data, env)
    assert config.shutdown_timeout == 0.5
    assert config.openmail.api_key == Secret("om_live_x")
    assert config.openmail.webhook.listen == Listen("127.0.0.1", 8081)
    agent = config.sinks["agent"].options
    assert isinstance(agent, HttpSinkOptions)
    assert agent.url == "http://agent:3000/webhooks"


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, "/fallback"), ({"HOOK_PATH": ""}, "/fallback"), ({"HOOK_PATH": "/given"}, "/given")],
)
def test_default_applies_when_the_variable_is_unset_or_empty(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    data = merged(BASE, {"openmail": {"webhook": {"path": "${HOOK_PATH:-/fallback}"}}})
    assert load(tmp_path, data, env).openmail.webhook.path == expected


def test_required_variable_with_message_passes_when_set(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"api_key": "${OM_KEY:?set OM_KEY}"}})
    assert load(tmp_path, data, {"OM_KEY": "k1"}).openmail.api_key == Secret("k1")


def test_a_double_dollar_is_a_literal_dollar(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"webhook": {"secret": "pa$$word${SUFFIX}"}}})
    config = load(tmp_path, data, {"SUFFIX": "!"})
    assert config.openmail.webhook.secret == Secret("pa$word!")


def test_unset_var_falls_back_to_var_file(tmp_path: Path) -> None:
    (tmp_path / "om_key").write_text("om_from_file\n")
    data = merged(BASE, {"openmail": {"api_key": "${OM_KEY}"}})
    config = load(tmp_path, data, {"OM_KEY_FILE": str(tmp_path / "om_key")})
    assert config.openmail.api_key == Secret("om_from_file")


def test_interpolation_in_a_flow_mapping_is_a_clean_yaml_error(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        openmail:
          api_key: k
          webhook:
            secret: s
        sinks:
          agent: {type: http, url: http://127.0.0.1:3000/h, secret: ${AGENT_SECRET}}
    """)
    (found,) = problems(tmp_path, text, {"AGENT_SECRET": "x"})
    assert found.startswith("<yaml>: not valid YAML at line 6, column")
    assert "a ${...} value inside a {...} flow mapping must be quoted" in found


def test_interpolation_in_a_quoted_flow_value_works(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        openmail: {api_key: k, webhook: {secret: s}}
        sinks:
          agent: {type: http, url: http://127.0.0.1:3000/h, secret: "${AGENT_SECRET}"}
    """)
    config = load(tmp_path, text, {"AGENT_SECRET": "from-env"})
    agent = config.sinks["agent"].options
    assert isinstance(agent, HttpSinkOptions)
    assert agent.secret == Secret("from-env")


# --- secrets -----------------------------------------------------------------------------------


def test_secret_repr_and_str_never_show_the_value() -> None:
    secret = Secret("hunter2-very-secret")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "***" in repr(secret)
    assert secret.get() == "hunter2-very-secret"
    assert secret == Secret("hunter2-very-secret") != Secret("other")


def test_no_secret_shows_in_the_config_repr_or_its_description(tmp_path: Path) -> None:
    config = load(tmp_path, merged(BASE, {"admin": {"token": "admin-token-3c4d"}}))
    shown = json.dumps(describe(config))
    for secret in (API_KEY, WEBHOOK_SECRET, AGENT_SECRET, "admin-token-3c4d"):
        assert secret not in repr(config)
        assert secret not in shown
    described = describe(config)
    assert isinstance(described, dict)
    assert described["openmail"]["api_key"] == "***"
    assert described["sinks"]["agent"]["secret"] == "***"
    assert described["admin"]["token"] == "***"


def test_secrets_from_files_relative_to_the_config(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    (conf_dir / "secrets").mkdir(parents=True)
    (conf_dir / "secrets" / "api_key").write_text("om_file_key\n")
    (tmp_path / "hook").write_text("  hook-from-file \n")
    (conf_dir / "agent").write_text("agent-from-file")
    data = merged(BASE, {
        "openmail": {"api_key": DROP, "api_key_file": "secrets/api_key",
                     "webhook": {"secret": DROP, "secret_file": str(tmp_path / "hook")}},
        "sinks": {"agent": {"secret": DROP, "secret_file": "./agent"}},
    })  # fmt: skip
    config = load(conf_dir, data)
    assert config.openmail.api_key == Secret("om_file_key")
    assert config.openmail.webhook.secret == Secret("hook-from-file")
    agent = config.sinks["agent"].options
    assert isinstance(agent, HttpSinkOptions)
    assert agent.secret == Secret("agent-from-file")


def test_an_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    data = merged(BASE, {"openmail": {"api_key": DROP, "api_key_file": "empty"}})
    (found,) = problems(tmp_path, data)
    assert found.startswith("openmail.api_key_file: ")
    assert "is empty" in found


def test_webhook_secrets_list_for_rotation(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"webhook": {"secrets": ["old-1", "old-2"]}}})
    webhook = load(tmp_path, data).openmail.webhook
    assert webhook.account_secrets == (Secret(WEBHOOK_SECRET), Secret("old-1"), Secret("old-2"))
    assert webhook.inbox_secrets == {}


def test_webhook_secrets_per_inbox_map(tmp_path: Path) -> None:
    (tmp_path / "sales").write_text("sales-secret\n")
    data = merged(BASE, {"openmail": {"webhook": {
        "secret": DROP, "secrets": {"inb_support": "support-secret", "inb_sales_file": "sales"},
    }}})  # fmt: skip
    webhook = load(tmp_path, data).openmail.webhook
    assert webhook.account_secrets == ()
    assert dict(webhook.inbox_secrets) == {
        "inb_support": Secret("support-secret"), "inb_sales": Secret("sales-secret")
    }  # fmt: skip


def test_per_inbox_secret_and_its_file_together_is_an_error(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"webhook": {
        "secret": DROP, "secrets": {"inb_1": "x", "inb_1_file": "whatever"},
    }}})  # fmt: skip
    assert problems(tmp_path, data) == [
        "openmail.webhook.secrets.inb_1: give either inb_1 or inb_1_file, not both"
    ]


def test_webhook_secrets_file_one_per_line(tmp_path: Path) -> None:
    (tmp_path / "rotation").write_text("new-secret\n\nold-secret\n")
    data = merged(BASE, {"openmail": {"webhook": {"secret": DROP, "secrets_file": "rotation"}}})
    webhook = load(tmp_path, data).openmail.webhook
    assert webhook.account_secrets == (Secret("new-secret"), Secret("old-secret"))


def test_webhook_secrets_and_secrets_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "rotation").write_text("a\n")
    data = merged(BASE, {"openmail": {"webhook": {"secrets": ["b"], "secrets_file": "rotation"}}})
    assert problems(tmp_path, data) == [
        "openmail.webhook.secrets: give either secrets or secrets_file, not both"
    ]


def test_api_key_is_optional_when_the_websocket_is_disabled(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"api_key": DROP, "websocket": {"enabled": False}}})
    config = load(tmp_path, data)
    assert config.openmail.api_key is None
    assert config.openmail.websocket.enabled is False


def test_webhook_secret_is_optional_when_the_webhook_is_disabled(tmp_path: Path) -> None:
    data = merged(BASE, {"openmail": {"webhook": {"enabled": False, "secret": DROP}}})
    assert load(tmp_path, data).openmail.webhook.account_secrets == ()


# --- paths -------------------------------------------------------------------------------------


def test_state_path_defaults_beside_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the default must not depend on the working directory
    config = load(tmp_path / "etc", BASE, env={})
    assert config.state.path == tmp_path / "etc" / "state" / "bridge.db"


def test_state_path_defaults_to_state_directory_under_systemd(tmp_path: Path) -> None:
    config = load(tmp_path, BASE, env={"STATE_DIRECTORY": "/var/lib/openmail-bridge"})
    assert config.state.path == Path("/var/lib/openmail-bridge/bridge.db")
    # systemd joins several StateDirectory= entries with ':'; the first is ours.
    config = load(tmp_path, BASE, env={"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"})
    assert config.state.path == Path("/var/lib/a/bridge.db")


def test_an_explicit_state_path_wins_over_state_directory(tmp_path: Path) -> None:
    data = merged(BASE, {"state": {"path": "data/spool.db", "max_bytes": "64KiB"}})
    config = load(tmp_path, data, env={"STATE_DIRECTORY": "/var/lib/openmail-bridge"})
    assert config.state.path == tmp_path / "data" / "spool.db"
    assert config.state.max_bytes == 64 * 1024


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = merged(BASE, {
        "openmail": {"webhook": {"tls": {"cert": "tls/cert.pem", "key": "/abs/key.pem"}}},
        "sinks": {"audit": {"path": "../logs/{inbox_id}.jsonl"}},
    })  # fmt: skip
    config = load(tmp_path / "conf", data)
    tls = config.openmail.webhook.tls
    assert tls is not None
    assert tls.cert == tmp_path / "conf" / "tls" / "cert.pem"
    assert tls.key == Path("/abs/key.pem")
    audit = config.sinks["audit"].options
    assert isinstance(audit, FileSinkOptions)
    assert audit.path == tmp_path / "conf" / ".." / "logs" / "{inbox_id}.jsonl"


def test_home_is_expanded_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(tmp_path, merged(BASE, {"state": {"path": "~/bridge.db"}}))
    assert config.state.path == tmp_path / "home" / "bridge.db"


def test_text_config_resolves_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(text=yaml.safe_dump(BASE), sink_types=SINK_TYPES, env={})
    assert config.state.path == tmp_path / "state" / "bridge.db"
    assert config.source is None


# --- value types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("20s", 20.0), ("5m", 300.0), ("24h", 86400.0), ("7d", 604800.0),
     ("1.5s", 1.5), (" 2m ", 120.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-1s", "1e3s", "s", "5w", "1.s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("64KiB", 65536), ("10MiB", 10485760), ("1GiB", 1 << 30), ("512", 512), ("1.5KiB", 1536),
     ("10MB", 10_000_000)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "KiB", "-1KiB", "10 mebibytes", "10XiB"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_durations_and_sizes_in_a_config(tmp_path: Path) -> None:
    data = merged(BASE, {
        "shutdown_timeout": "500ms",
        "openmail": {"websocket": {"ping_interval": "20s", "reconnect": {"max": "5m"}},
                     "webhook": {"max_body": "64KiB"}},
        "state": {"dedup_window": "7d", "max_bytes": "10MiB"},
        "sinks": {"agent": {"retry": {"max_age": "24h"}}},
    })  # fmt: skip
    config = load(tmp_path, data)
    assert config.shutdown_timeout == 0.5
    assert config.openmail.websocket.ping_interval == 20.0
    assert config.openmail.websocket.reconnect.max == 300.0
    assert config.openmail.webhook.max_body == 65536
    assert config.state.dedup_window == 604800.0
    assert config.state.max_bytes == 10485760
    assert config.sinks["agent"].retry.max_age == 86400.0


@pytest.mark.parametrize(
    ("text", "listen", "loopback"),
    [("127.0.0.1:8080", Listen("127.0.0.1", 8080), True),
     ("[::1]:9464", Listen("::1", 9464), True),
     (":8080", Listen("0.0.0.0", 8080), False),
     ("0.0.0.0:0", Listen("0.0.0.0", 0), False)],
)  # fmt: skip
def test_listen_addresses(text: str, listen: Listen, loopback: bool) -> None:
    assert parse_listen(text) == listen
    assert listen.is_loopback is loopback


@pytest.mark.parametrize("text", ["localhost", "127.0.0.1:", "host:http", "x:65536", ""])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError, match=r"host:port|out of range"):
        parse_listen(text)


# --- routes ------------------------------------------------------------------------------------


def test_routes_keep_their_order_and_match_keys(tmp_path: Path) -> None:
    data = merged(BASE, {"routes": [
        {"name": "vip", "match": {"from": ["*@x.com"], "to": ["ceo@*"]}, "sinks": ["agent"]},
        {"name": "support", "match": {"inbox_ids": ["inb_1"]}, "sinks": ["audit", "console"]},
    ]})  # fmt: skip
    routes = load(tmp_path, data).routes
    assert [r.name for r in routes] == ["vip", "support"]
    assert routes[0].match.senders == ("*@x.com",)
    assert routes[0].match.recipients == ("ceo@*",)
    assert routes[1].match.inbox_ids == ("inb_1",)
    assert routes[1].sinks == ("audit", "console")


def test_without_routes_every_event_goes_to_every_sink(tmp_path: Path) -> None:
    (route,) = load(tmp_path, merged(BASE, {"routes": DROP})).routes
    assert set(route.sinks) == {"agent", "audit", "console"}
    assert route.match.inbox_ids == route.match.event_types == ()


def test_a_numeric_sink_name_can_be_routed_to(tmp_path: Path) -> None:
    data = merged(BASE, {"sinks": {1: {"type": "stdout"}}, "routes": [{"name": "r", "sinks": [1]}]})
    config = load(tmp_path, data)
    assert "1" in config.sinks
    assert config.routes[0].sinks == ("1",)


# --- frozen, typed objects ---------------------------------------------------------------------


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, BASE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.shutdown_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.openmail.webhook.tolerance = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sinks["agent"].concurrency = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes[0].match.inbox_ids = ()  # type: ignore[misc]
    options = config.sinks["agent"].options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.url = "http://evil"  # type: ignore[attr-defined]
    # Lists become tuples, so nothing can be appended behind the loader's back.
    assert isinstance(config.routes, tuple)
    assert isinstance(config.routes[0].sinks, tuple)
    assert isinstance(config.openmail.websocket.inbox_ids, tuple)


def test_sink_config_carries_shared_and_typed_options(tmp_path: Path) -> None:
    data = merged(BASE, {"sinks": {"agent": {
        "ordering": "strict", "concurrency": 2, "retry": {"max_attempts": 5}, "timeout": "3s",
    }}})  # fmt: skip
    agent = load(tmp_path, data).sinks["agent"]
    assert (agent.name, agent.type, agent.ordering, agent.concurrency) == ("agent", "http",
                                                                           "strict", 2)  # fmt: skip
    assert agent.retry.max_attempts == 5
    assert agent.retry.initial == 1.0  # defaults fill what is not given
    assert isinstance(agent.options, HttpSinkOptions)
    assert agent.options.timeout == 3.0
    assert agent.options.secret == Secret(AGENT_SECRET)


def test_build_config_takes_a_parsed_tree(tmp_path: Path) -> None:
    config = build_config(copy.deepcopy(BASE), base_dir=tmp_path, sink_types=SINK_TYPES, env={})
    assert config.state.path == tmp_path / "state" / "bridge.db"
    with pytest.raises(ConfigError, match="<top>: expected a mapping"):
        build_config(["not", "a", "mapping"], base_dir=tmp_path, sink_types=SINK_TYPES, env={})


def test_the_config_package_does_not_import_the_sinks() -> None:
    # The sink registry is passed in (``sink_types=``): loading a config needs no sink module.
    code = "import sys, bridge.config; print('bridge.sinks' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "False"


def test_sinks_import_only_the_leaf_config_modules() -> None:
    # ``bridge.config`` (the package face) and its loader are for callers that load configs.
    allowed = {"bridge.config.schema", "bridge.config.values"}
    for module in sorted((REPO / "bridge" / "sinks").glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        config_imports = {name for name in imported if name and name.startswith("bridge.config")}
        assert config_imports <= allowed, module.name
