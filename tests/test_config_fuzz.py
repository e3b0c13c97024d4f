"""Property test for ``bridge.config.build_config``: any YAML-shaped tree yields a ``Config`` or a
``ConfigError`` whose every problem reads ``key.path: message`` -- never another exception."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge.config import (
    Config,
    OpenMailConfig,
    RouteConfig,
    RouteMatch,
    SinkConfig,
    StateConfig,
    WebhookConfig,
    WebSocketConfig,
    build_config,
)
from bridge.errors import ConfigError
from bridge.sinks import SINK_TYPES

# Nothing under this directory exists, so a random ``*_file`` or path never reads a real file.
BASE_DIR = Path(os.sep) / "nonexistent-openmail-bridge-fuzz"
ENV = {
    "SET": "value",
    "EMPTY": "",
    "DUR": "5s",
    # ${VAR} with VAR unset falls back to the file VAR_FILE names (container secrets).
    "MISSING_FILE": str(BASE_DIR / "secret"),
    "NUL_FILE": "a\x00b",
}


def _known_keys() -> list[str]:
    """Every key the schema knows, so random trees often hit real sections and fields."""
    classes: list[type] = [Config, OpenMailConfig, WebSocketConfig, WebhookConfig, StateConfig]
    classes += [SinkConfig, RouteConfig, RouteMatch]
    classes += [entry.options for entry in SINK_TYPES.values()]
    keys: set[str] = set()
    for cls in classes:
        for f in dataclasses.fields(cls):
            key = f.metadata.get("key", f.name)
            keys |= {key, f"{key}_file"}
    return sorted(keys | {"admin", "log", "listen", "token", "level", "format", "secrets_file"})


KNOWN_KEYS = _known_keys()
WORDS = [
    "", " ", "true", "no", "0", "-1", "1.5", "500ms", "20s", "5m", "24h", "7d", "10 parsecs",
    "64KiB", "10MiB", "1GiB", "127.0.0.1:0", ":8080", "[::1]:9464", "localhost", "x:99999",
    "http://127.0.0.1:3000/hook", "https://x", "ftp://x", "ws://127.0.0.1:1/ws", "wss://x",
    "stdout", "file", "http", "kafka", "thread", "strict", "payload", "envelope", "info",
    "/webhooks", "hooks", "./events.jsonl", "~/x", "${SET}", "${EMPTY}", "${UNSET}",
    "${UNSET:-5m}", "${UNSET:?set it}", "${EMPTY:-d}", "a${SET}b", "$$", "${", "inb_1",
    "${MISSING}", "${NUL}", "${NUL:-x}", "http://[x", "ws://[::1", "http://x:99999/",
    "message.received", "*@x.com", "Jane <jane@x.com>",
    # Inputs that once escaped as ValueError, OverflowError or RuntimeError:
    "\u00b2", "x:\u00b2", "a\x00b", "~no-such-user-fuzz/x", "9" * 400 + "KiB", "9" * 400 + "s",
]  # fmt: skip

keys = st.one_of(
    st.sampled_from(KNOWN_KEYS),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=1, max_size=8),
    st.integers(min_value=-3, max_value=3),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
trees = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=20,
)

# Trees that look like configs: known section names at the top, random bodies below.
SECTIONS = ["openmail", "state", "admin", "log", "sinks", "routes", "shutdown_timeout"]
config_like = st.dictionaries(st.sampled_from(SECTIONS) | keys, trees, max_size=7)

# A valid config with one random subtree grafted in: reaches the checks behind the first layer.
VALID: dict[str, Any] = {
    "openmail": {
        "api_key": "k",
        "websocket": {"enabled": True, "inbox_ids": ["inb_1"]},
        "webhook": {"listen": "127.0.0.1:0", "secret": "s", "tolerance": "5m"},
    },
    "state": {"path": "state/bridge.db", "max_bytes": "1GiB"},
    "admin": {"listen": "127.0.0.1:0"},
    "log": {"level": "info"},
    "sinks": {
        "agent": {"type": "http", "url": "http://127.0.0.1:3000/h", "retry": {"initial": "1s"}},
        "audit": {"type": "file", "path": "events.jsonl"},
        "console": {"type": "stdout"},
    },
    "routes": [
        {"name": "r", "match": {"inbox_ids": ["inb_1"], "from": ["*@x.com"]}, "sinks": ["agent"]},
        {"name": "all", "sinks": ["console", "audit"]},
    ],
}
GRAFT_POINTS: list[tuple[Any, ...]] = [
    (),
    ("openmail",),
    ("openmail", "api_key"),
    ("openmail", "websocket"),
    ("openmail", "websocket", "reconnect"),
    ("openmail", "webhook"),
    ("openmail", "webhook", "secrets"),
    ("openmail", "webhook", "tls"),
    ("state",),
    ("admin",),
    ("log",),
    ("sinks",),
    ("sinks", "agent"),
    ("sinks", "agent", "headers"),
    ("sinks", "agent", "retry"),
    ("sinks", "audit"),
    ("sinks", "new"),
    ("routes",),
    ("routes", 0),
    ("routes", 0, "match"),
    ("routes", 1, "sinks"),
    # leaves
    ("shutdown_timeout",),
    ("openmail", "websocket", "url"),
    ("openmail", "websocket", "max_in_flight"),
    ("openmail", "webhook", "listen"),
    ("openmail", "webhook", "path"),
    ("state", "path"),
    ("state", "max_bytes"),
    ("sinks", "agent", "url"),
    ("sinks", "agent", "concurrency"),
    ("sinks", "audit", "path"),
    ("routes", 0, "name"),
]


def _graft(point: tuple[Any, ...], value: Any, key: Any) -> Any:
    """A deep copy of VALID with ``value`` set at ``point`` (or, at the top, under ``key``)."""
    tree = copy.deepcopy(VALID)
    if not point:
        tree[key] = value
        return tree
    node = tree
    for step in point[:-1]:
        node = node[step]
    node[point[-1]] = value
    return tree


grafted = st.builds(_graft, st.sampled_from(GRAFT_POINTS), trees, keys)


def _problem_ok(problem: object, top_keys: set[str]) -> bool:
    """``path: message`` with the path starting at a key the input has (or ``<top>``)."""
    if not isinstance(problem, str) or ": " not in problem:
        return False
    path, message = problem.split(": ", 1)
    starts_at_key = any(path == k or path.startswith((f"{k}.", f"{k}[")) for k in top_keys)
    return bool(message.strip()) and starts_at_key


@settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.one_of(trees, config_like, grafted))
# Regressions: each once escaped build_config as a bare exception.
@example(_graft(("sinks", "agent", "concurrency"), "\u00b2", None))  # ValueError from int()
@example(_graft(("openmail",), {"api_key_file": "a\x00b", "webhook": {"secret": "s"}}, None))
@example(_graft(("state", "path"), "~no-such-user-fuzz/db", None))  # RuntimeError
@example(_graft(("state", "max_bytes"), "9" * 400 + "KiB", None))  # OverflowError
@example(_graft(("state", "max_bytes"), 10**400, None))  # OverflowError
@example(_graft(("sinks", "agent", "url"), "http://[x", None))  # ValueError from urlsplit
@example(_graft(("openmail", "api_key"), "${NUL}", None))  # ValueError reading NUL_FILE
def test_any_tree_gives_config_or_key_path_errors(raw: Any) -> None:
    try:
        config: Config | None = build_config(raw, base_dir=BASE_DIR, sink_types=SINK_TYPES, env=ENV)
        problems: list[str] = []
    except ConfigError as exc:  # any other exception fails the test
        config, problems = None, exc.problems
    if config is not None:
        assert isinstance(config, Config)
        assert config.sinks, "a valid config has at least one sink"
        for route in config.routes:
            assert set(route.sinks) <= set(config.sinks)
        return
    assert problems, "a ConfigError must name at least one problem"
    top = {str(k) for k in raw} if isinstance(raw, dict) else set()
    # Sections that are checked even when absent report under their own name.
    top |= {"<top>", "sinks", "openmail", "state"}
    bad = [p for p in problems if not _problem_ok(p, top)]
    assert not bad, f"problem lines not shaped 'path: message': {bad}"


def test_the_grafting_base_is_valid() -> None:
    """The base the grafts start from is itself valid, so a failure points at the graft."""
    config = build_config(VALID, base_dir=BASE_DIR, sink_types=SINK_TYPES, env=ENV)
    assert config.state.path == BASE_DIR / "state" / "bridge.db"
    assert [r.name for r in config.routes] == ["r", "all"]
