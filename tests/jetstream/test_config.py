"""The ``nats:`` section and ``type: nats`` sinks: key-path errors, warnings, the pure sidecar,
and credentials masked in ``check``'s printout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bridge.config import Config, NatsConfig, build_config, config_warnings, describe
from bridge.config_secrets import config_secrets
from bridge.errors import ConfigError
from bridge.sinks import SINK_TYPES
from bridge.sinks.nats import NatsSinkOptions
from tests.conftest import WEBHOOK_SECRET, deep_merge, run_cli, write_config

TOKEN = "nats-token-7d1f0c9e"
PASSWORD = "nats-pass-93be4a1c"


def base(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "openmail": {
            "websocket": {"enabled": False},
            "webhook": {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET},
        },
        "nats": {"servers": ["nats://127.0.0.1:4222"]},
        "sinks": {"bus": {"type": "nats"}},
    }
    return deep_merge(raw, overrides)


def load(tmp_path: Path, raw: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return build_config(raw, sink_types=SINK_TYPES, base_dir=tmp_path, env=env or {})


def problems(tmp_path: Path, raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, raw, env)
    return info.value.problems


def test_defaults_and_the_sink_options(tmp_path: Path) -> None:
    config = load(tmp_path, base())
    assert isinstance(config.nats, NatsConfig)
    assert config.nats.stream.name == "OPENMAIL"
    assert config.nats.stream.subjects == ("openmail.>",)
    assert config.nats.stream.duplicate_window == 600.0
    assert config.nats.consume is None
    options = config.sinks["bus"].options
    assert isinstance(options, NatsSinkOptions)
    assert options.subject == "openmail.{inbox_id}.{event}"
    assert config.sinks["bus"].ordering == "thread"


def test_a_pure_sidecar_needs_no_openmail_key(tmp_path: Path) -> None:
    raw = base(
        openmail={"webhook": {"enabled": False}},
        nats={"consume": {"consumer": "agent-support", "ack_wait": "5s"}},
        sinks={"bus": None, "audit": {"type": "file", "path": "out.jsonl"}},
    )
    del raw["sinks"]["bus"]
    config = load(tmp_path, raw)
    assert config.openmail.api_key is None
    assert config.nats is not None
    assert config.nats.consume is not None
    assert config.nats.consume.consumer == "agent-support"
    assert config.nats.consume.ack_wait == 5.0


def test_without_consume_both_transports_disabled_is_still_an_error(tmp_path: Path) -> None:
    raw = base(openmail={"webhook": {"enabled": False}})
    found = problems(tmp_path, raw)
    assert any(p.startswith("openmail: both websocket and webhook are disabled") for p in found)


def test_a_consuming_bridge_may_hold_the_websocket_too(tmp_path: Path) -> None:
    # Events taken from the stream never move the WebSocket replay cursor (Event.via).
    raw = base(
        openmail={"api_key": "om_test_key", "websocket": {"enabled": True}},
        nats={"consume": {"consumer": "c1"}},
    )
    config = load(tmp_path, raw)
    assert config.openmail.websocket.enabled
    assert config.nats is not None
    assert config.nats.consume is not None


@pytest.mark.parametrize(
    ("override", "path", "fragment"),
    [
        ({"nats": {"servers": ["http://x:4222"]}}, "nats.servers[0]", "not a server URL"),
        ({"nats": {"servers": []}}, "nats.servers", "names no server"),
        ({"nats": {"stream": {"duplicate_window": 30}}}, "nats.stream.duplicate_window", "unit"),
        ({"nats": {"stream": {"replicas": 7}}}, "nats.stream.replicas", "between 1 and 5"),
        ({"nats": {"stream": {"name": "A.B"}}}, "nats.stream.name", "letters, digits"),
        ({"nats": {"stream": {"subjects": ["a.>.b"]}}}, "nats.stream.subjects[0]", "not a NATS"),
        ({"nats": {"consume": {}}}, "nats.consume.consumer", "is required"),
        ({"nats": {"consume": {"consumer": "x y"}}}, "nats.consume.consumer", "letters"),
        (
            {"nats": {"consume": {"consumer": "c", "max_ack_pending": 0}}},
            "nats.consume.max_ack_pending",
            "at least 1",
        ),
        ({"nats": {"user": "u"}}, "nats.password", "go together"),
        ({"nats": {"token": "t0k3n-x", "user": "u", "password": "p"}}, "nats.user", "one way"),
        ({"nats": {"creds_file": "missing.creds"}}, "nats.creds_file", "not a readable file"),
        ({"nats": {"tls": {"cert": __file__}}}, "nats.tls", "cert and key go together"),
        ({"nats": {"strem": {}}}, "nats.strem", "did you mean 'stream'"),
        ({"sinks": {"bus": {"subject": "openmail.{nope}"}}}, "sinks.bus.subject", "{nope}"),
        ({"sinks": {"bus": {"subject": "openmail.*.{event}"}}}, "sinks.bus.subject", "wildcard"),
        ({"sinks": {"bus": {"subject": "other.{inbox_id}"}}}, "sinks.bus.subject", "openmail.>"),
        ({"sinks": {"bus": {"timeout": "0s"}}}, "sinks.bus.timeout", "more than 0s"),
    ],
)
def test_problems_name_their_key_path(
    tmp_path: Path, override: dict[str, Any], path: str, fragment: str
) -> None:
    found = problems(tmp_path, base(**override))
    assert len(found) == 1, found
    assert found[0].startswith(f"{path}: "), found[0]
    assert fragment in found[0]


def test_a_nats_sink_without_a_nats_section_is_an_error(tmp_path: Path) -> None:
    raw = base()
    del raw["nats"]
    found = problems(tmp_path, raw)
    assert found == ["sinks.bus: a sink of type nats needs the top-level nats: section"]


def test_subjects_not_covering_the_sink_name_both(tmp_path: Path) -> None:
    raw = base(nats={"stream": {"subjects": ["openmail.*"]}})
    [problem] = problems(tmp_path, raw)
    assert "openmail.*.*" in problem
    assert "openmail.*)" in problem


def test_check_warns_about_a_short_duplicate_window(tmp_path: Path) -> None:
    config = load(tmp_path, base(nats={"stream": {"duplicate_window": "90s", "max_age": "1h"}}))
    [warning] = [w for w in config_warnings(config) if w.key == "nats.stream.duplicate_window"]
    assert "90s" in warning.message
    assert "120s" in warning.message
    assert not [w for w in config_warnings(load(tmp_path, base())) if w.key.startswith("nats.")]


def spool_warnings(config: Config) -> list[str]:
    event = "config.spool_smaller_than_max_body"
    return [w.message for w in config_warnings(config) if w.event == event]


def test_a_pure_sidecar_is_not_warned_of_a_webhook_body_it_never_takes(tmp_path: Path) -> None:
    # What a sidecar stores comes from the stream, one NATS message at most: the server's
    # max_payload, known once connected, not openmail.webhook.max_body.
    raw = base(
        openmail={"webhook": {"enabled": False, "max_body": "10MiB"}},
        nats={"consume": {"consumer": "agent-support"}},
        state={"max_bytes": "300KiB"},
    )
    del raw["sinks"]["bus"]
    raw["sinks"]["audit"] = {"type": "file", "path": "out.jsonl"}
    assert spool_warnings(load(tmp_path, raw)) == []


@pytest.mark.parametrize(
    ("transports", "named"),
    [
        ({"webhook": {"enabled": True}}, "the webhook takes: an event larger"),
        (
            {"api_key": "om_key", "webhook": {"enabled": False}, "websocket": {"enabled": True}},
            "the WebSocket takes: an event larger than the spool can never be stored, and over "
            "the WebSocket it blocks the events after it",
        ),
    ],
    ids=["webhook", "websocket"],
)
def test_a_spool_smaller_than_what_openmail_sends_is_warned_of(
    tmp_path: Path, transports: dict[str, Any], named: str
) -> None:
    raw = base(
        openmail=deep_merge(transports, {"webhook": {"max_body": "10MiB"}}),
        nats={"consume": {"consumer": "agent-support"}},
        state={"max_bytes": "300KiB"},
    )
    [warning] = spool_warnings(load(tmp_path, raw))
    assert "(307200 bytes) is below openmail.webhook.max_body (10485760)" in warning
    assert named in warning


def test_secrets_come_from_env_and_files_and_are_masked(tmp_path: Path) -> None:
    (tmp_path / "pass.txt").write_text(PASSWORD + "\n")
    raw = base(
        nats={
            "servers": ["nats://alice:url-secret-55@127.0.0.1:4222"],
            "user": "alice",
            "password_file": "pass.txt",
        }
    )
    config = load(tmp_path, raw)
    assert config.nats is not None
    assert config.nats.password is not None
    assert config.nats.password.get() == PASSWORD
    shown = json.dumps(describe(config))
    assert PASSWORD not in shown
    assert "url-secret-55" not in shown
    assert '"password": "***"' in shown

    token_config = load(tmp_path, base(nats={"token": "${NATS_TOKEN}"}), {"NATS_TOKEN": TOKEN})
    assert token_config.nats is not None
    assert token_config.nats.token is not None
    assert token_config.nats.token.get() == TOKEN
    assert TOKEN not in json.dumps(describe(token_config))


async def test_check_prints_the_nats_section_masked(tmp_path: Path) -> None:
    raw = base(
        nats={
            "token": TOKEN,
            "servers": ["nats://bob:hunter22x@127.0.0.1:4222"],
            "stream": {"duplicate_window": "1m"},
        }
    )
    path = write_config(tmp_path / "config.yaml", raw)
    code, out, err = await run_cli("check", "-c", str(path))
    assert code == 0, err
    printed = json.loads(out)
    assert printed["nats"]["token"] == "***"
    assert printed["nats"]["servers"] == ["nats://***@127.0.0.1:4222"]
    assert "nats.stream.duplicate_window: is 60s" in err
    assert TOKEN not in out + err
    assert "hunter22x" not in out + err


CREDS = """-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJBQkMifQ.c2lnbmF0dXJl
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.

-----BEGIN USER NKEY SEED-----
SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4
------END USER NKEY SEED------
"""


def test_every_nats_credential_is_known_to_the_redactor(tmp_path: Path) -> None:
    (tmp_path / "user.creds").write_text(CREDS)
    creds = load(tmp_path, base(nats={"creds_file": "user.creds"}))
    secrets = config_secrets(creds)
    assert "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTC4" in secrets
    assert any(s.startswith("eyJ0eXAi") for s in secrets)
    assert not any("BEGIN" in s or "IMPORTANT" in s for s in secrets)
    assert "user.creds" in json.dumps(describe(creds))  # the path is shown, never the content

    raw = base(
        nats={
            "servers": ["nats://carol:url-pass-77@127.0.0.1:4222"],
            "user": "carol",
            "password": PASSWORD,
        }
    )
    url_and_password = config_secrets(load(tmp_path, raw))
    assert {"url-pass-77", PASSWORD} <= set(url_and_password)
    assert TOKEN in config_secrets(load(tmp_path, base(nats={"token": TOKEN})))
