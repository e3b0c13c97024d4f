"""A consuming bridge whose ``state.dedup_window`` is shorter than the stream's ``max_age`` is
warned of, by ``check`` and at start: a consumer it creates replays the whole stream, and what it
delivered longer ago than the window would go out again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.config import ConfigWarning, config_warnings
from tests.conftest import (
    DEMO_API_KEY,
    deep_merge,
    events_named,
    run_cli,
    running_bridge,
    write_config,
)

from .conftest import NatsServer, load_raw, sidecar_raw


def dedup_warnings(tmp_path: Path, raw: dict[str, Any]) -> list[ConfigWarning]:
    config = load_raw(tmp_path, raw)
    return [w for w in config_warnings(config) if w.event == "config.nats_dedup_window"]


def sidecar(tmp_path: Path, server: NatsServer, **overrides: Any) -> dict[str, Any]:
    return deep_merge(sidecar_raw(tmp_path, server), overrides)


@pytest.mark.parametrize(
    ("window", "max_age", "names"),
    [
        ("1h", None, ("(1h)", "(7d)")),  # the stream's default max_age
        ("36h", "2d", ("(36h)", "(2d)")),
        ("90m", "0s", ("(90m)", "no age limit")),  # 0: the stream keeps events for ever
    ],
)
def test_a_window_shorter_than_the_streams_max_age_is_warned_of_naming_both(
    tmp_path: Path,
    nats_server: NatsServer,
    window: str,
    max_age: str | None,
    names: tuple[str, str],
) -> None:
    stream = {} if max_age is None else {"stream": {"max_age": max_age}}
    raw = sidecar(tmp_path, nats_server, state={"dedup_window": window}, nats=stream)
    (warning,) = dedup_warnings(tmp_path, raw)
    assert warning.key == "state.dedup_window"
    assert "nats.stream.max_age" in warning.message
    for name in names:
        assert name in warning.message
    assert "replays the whole stream" in warning.message


def test_only_a_consuming_bridge_that_forgets_sooner_than_the_stream_is_warned(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    short = sidecar(tmp_path, nats_server, state={"dedup_window": "2d"})
    assert len(dedup_warnings(tmp_path, short)) == 1
    # The same window over a stream that keeps no longer, or longer than the defaults: covered.
    covered = deep_merge(short, {"nats": {"stream": {"max_age": "2d"}}})
    assert dedup_warnings(tmp_path, covered) == []
    assert dedup_warnings(tmp_path, sidecar(tmp_path, nats_server)) == []  # 7d and 7d
    # An edge only publishes: it creates no consumer, nothing is replayed to it.
    edge = deep_merge(short, {"sinks": {"bus": {"type": "nats"}}})
    del edge["nats"]["consume"]
    edge["openmail"]["api_key"] = DEMO_API_KEY
    edge["openmail"]["webhook"]["enabled"] = True
    assert dedup_warnings(tmp_path, edge) == []


async def test_check_prints_it_and_a_start_logs_it(tmp_path: Path, nats_server: NatsServer) -> None:
    raw = sidecar(tmp_path, nats_server, state={"dedup_window": "1h"})
    path = write_config(tmp_path / "sidecar.yaml", raw)
    code, _, err = await run_cli("check", "-c", str(path))
    assert code == 0, err
    assert "warning: state.dedup_window: (1h) is shorter than nats.stream.max_age (7d)" in err

    with structlog.testing.capture_logs() as logs:
        async with running_bridge(load_raw(tmp_path, raw)):
            pass
    (logged,) = events_named(logs, "config.nats_dedup_window")
    assert logged["log_level"] == "warning"
    assert logged["setting"] == "state.dedup_window"
    assert "(1h)" in logged["hint"]
    assert "(7d)" in logged["hint"]
