"""The config as the operator commands (``status``, ``dlq``, ``route-test``) read it: leniently.

They need a few keys only: ``state.path``, ``admin.enabled`` / ``admin.listen`` / ``admin.token``
and the routes with the sinks' names. Everything else is left unread, so an unset ``${VAR}``
elsewhere, a missing secret file, a typo or a key given twice in another section (say a file a
rejected reload left behind) does not stop an operator from looking at a running bridge. A key
given twice in a part they read makes that part unusable, as any other problem there does: the
value it would replace may be the one meant. Of the secrets, only
``admin.token`` is resolved, and a problem with it is kept for the caller rather than raised: a
bridge that asks for no token does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bridge.config.loader import INBOUND_SECRETS, default_state_path, load_routes
from bridge.config.schema import AdminConfig, RouteConfig
from bridge.config.values import FilePath, Listen, Secret
from bridge.config.walker import Walker, describe_raw
from bridge.config.yaml_file import Repeat, read_yaml
from bridge.errors import ConfigError

STATE: Final = "state"
ADMIN: Final = "admin"
ROUTES: Final = "routes"


@dataclass(frozen=True, slots=True, kw_only=True)
class OperatorConfig:
    """What the operator commands read of a config; defaults where a key is not given."""

    source: Path | None
    state_path: Path
    admin: AdminConfig
    """``token`` is None when it is not set, or when it could not be read (``token_problem``)."""
    token_problem: str | None = None
    """Why ``admin.token`` could not be read, e.g. ``admin.token: environment variable
    ADMIN_TOKEN is not set (${ADMIN_TOKEN})``."""
    sinks: tuple[str, ...] = ()
    """The names of the configured sinks."""
    sink_types: Mapping[str, str] = field(default_factory=dict)
    """Each sink's ``type``, where it is a string (route-test: the guard covers HTTP sinks)."""
    routes: tuple[RouteConfig, ...] = ()
    problems: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """``STATE``, ``ADMIN`` or ``ROUTES`` -> the problems that make that part unusable."""

    def require(self, *parts: str) -> None:
        """Raises ConfigError listing the problems of ``parts`` (``STATE``, ``ADMIN``, ``ROUTES``),
        if any."""
        found = [p for part in parts for p in self.problems.get(part, ())]
        if found:
            raise ConfigError(found)


def read_operator_config(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> OperatorConfig:
    """Read the keys the operator commands use from ``path`` (or ``text``).

    Raises:
        ConfigError: the file cannot be read, is not YAML or is not a mapping. A problem with a
            key is kept in ``problems`` (or ``token_problem``) instead.
    """
    env = os.environ if env is None else env
    raw, base_dir, source, repeats = read_yaml(path, text)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"<top>: expected a mapping of sections, got {describe_raw(raw)}"])
    problems: dict[str, tuple[str, ...]] = {}

    def walker(part: str | None = None) -> Walker:
        """A walker for ``part``, holding the repeated keys that make it unusable already."""
        made = Walker(base_dir, env, inbound_secrets=INBOUND_SECRETS)
        for repeat in repeats:
            if part is not None and _part_of(repeat) == part:
                made.fail(repeat.path, repeat.message)
        return made

    state = walker(STATE)
    state_path = default_state_path(env, base_dir)
    raw_state = state.mapping("state", raw.get("state"))
    if raw_state is not None and "path" in raw_state:
        value = state.convert("state.path", raw_state["path"], FilePath)
        if isinstance(value, Path):
            state_path = value
    problems[STATE] = tuple(state.problems)

    admin_walker, token_walker = walker(ADMIN), walker()
    admin = AdminConfig()
    raw_admin = admin_walker.mapping("admin", raw.get("admin"))
    if raw_admin is not None:
        enabled = admin_walker.convert("admin.enabled", raw_admin.get("enabled", True), bool)
        listen = raw_admin.get("listen")
        listen = (
            admin.listen if listen is None else admin_walker.convert("admin.listen", listen, Listen)
        )
        token: object = None
        if "token_file" in raw_admin:
            token = token_walker.read_secret_file("admin.token_file", raw_admin["token_file"])
        elif raw_admin.get("token") is not None:
            token = token_walker.convert("admin.token", raw_admin["token"], Secret)
        if isinstance(enabled, bool) and isinstance(listen, Listen):
            admin = AdminConfig(
                enabled=enabled,
                listen=listen,
                token=token if isinstance(token, Secret) else None,
            )
    problems[ADMIN] = tuple(admin_walker.problems)

    routes_walker = walker(ROUTES)
    raw_sinks = raw.get("sinks")
    sinks = tuple(str(k) for k in raw_sinks) if isinstance(raw_sinks, dict) else ()
    sink_types = {
        str(name): sink["type"]
        for name, sink in (raw_sinks.items() if isinstance(raw_sinks, dict) else ())
        if isinstance(sink, dict) and isinstance(sink.get("type"), str)
    }
    routes = load_routes(routes_walker, raw.get("routes"), raw_sinks)
    problems[ROUTES] = tuple(routes_walker.problems)

    return OperatorConfig(
        source=source,
        state_path=state_path,
        admin=admin,
        token_problem="; ".join(token_walker.problems) or None,
        sinks=sinks,
        sink_types=sink_types,
        routes=routes or (),
        problems={k: v for k, v in problems.items() if v},
    )


def _part_of(repeat: Repeat) -> str | None:
    """The part a repeated key makes unusable: what the second would replace is a value the
    operator commands read (``routes`` check the sinks' names, ``route-test`` their types).
    None for a key they leave unread."""
    head = repeat.keys[0]
    if head in (STATE, ADMIN, ROUTES):
        return str(head)
    if head == "sinks" and (len(repeat.keys) <= 2 or repeat.keys[2] == "type"):
        return ROUTES
    return None
