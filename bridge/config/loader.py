"""Loading: a YAML file read into a :class:`Config`, every problem named by its key path.

The generic walk (values, sections, ``${VAR}``) is :class:`bridge.config.walker.Walker`; this
module holds the section-specific rules that share its problem list: sinks chosen by ``type:`` from
the registry the caller passes, routes naming sinks, the webhook's secret forms, and the checks
across keys of the OpenMail sections.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final

from bridge.attachments.settings import AttachmentsConfig
from bridge.config.directories import Verdict, check_directory, fixed_directory
from bridge.config.files import check_sink_files, check_state_path
from bridge.config.nats import NatsConfig, NatsPublishing, load_nats, publish_problems
from bridge.config.schema import (
    Config,
    OpenMailConfig,
    RouteConfig,
    SinkConfig,
    SinkOptionsSource,
    StateConfig,
    WebhookConfig,
)
from bridge.config.values import Secret
from bridge.config.walker import INVALID, Walker, describe_raw
from bridge.config.yaml_file import Repeat, read_yaml
from bridge.errors import ConfigError
from bridge.runtime import uvloop_available

_SINK_COMMON: Final = frozenset(
    f.name for f in dataclasses.fields(SinkConfig) if f.name not in ("name", "options")
)
"""Keys every sink has (``SinkConfig``); the rest belong to its type's options."""
INBOUND_SECRETS: Final = ("openmail.webhook", "admin.token")
"""Secrets that verify what others send; every other secret is one the bridge sends."""


def _parse_webhook_secrets(walker: Walker, path: str, raw: object) -> object:
    """``secrets:`` is a list (account-level, rotation) or a map ``inbox_id -> secret``."""
    if isinstance(raw, list):
        return walker.convert(path, raw, tuple[Secret, ...])
    if isinstance(raw, dict):
        result: dict[str, Secret] = {}
        ok = True
        for key, value in raw.items():
            inbox = str(key)
            if inbox.endswith("_file"):
                inbox = inbox.removesuffix("_file")
                if inbox in raw:
                    walker.fail(f"{path}.{inbox}", f"give either {inbox} or {key}, not both")
                    ok = False
                    continue
                secret = walker.read_secret_file(f"{path}.{key}", value)
            else:
                secret = walker.convert(f"{path}.{inbox}", value, Secret)
            if isinstance(secret, Secret):
                result[inbox] = secret
            else:
                ok = False
        return {"__map__": result} if ok else INVALID
    return walker.fail(
        path, f"expected a list of secrets or a map inbox_id -> secret, got {describe_raw(raw)}"
    )


def default_state_path(env: Mapping[str, str], base_dir: Path) -> Path:
    """Where ``state.path`` points when it is not given: ``$STATE_DIRECTORY`` (systemd's
    ``StateDirectory=``), else ``state/bridge.db`` beside the config file."""
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return Path(state_dir) / "bridge.db"
    return base_dir / "state" / "bridge.db"


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    sink_types: Mapping[str, SinkOptionsSource],
    text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate a config file (or ``text``, resolved against the current directory).

    Args:
        path: the YAML file; relative paths inside it resolve against its directory.
        sink_types: the sink registry (``bridge.sinks.SINK_TYPES``): ``type:`` word -> the
            options dataclass that sink type's keys fill.
        text: YAML to read instead of a file.
        env: the environment ``${VAR}`` reads (default ``os.environ``).

    Raises:
        ConfigError: listing every problem as ``key.path: message``.
    """
    env = os.environ if env is None else env
    file = read_yaml(path, text)
    return build_config(
        file.raw,
        sink_types=sink_types,
        base_dir=file.base_dir,
        env=env,
        source=file.source,
        repeats=file.repeats,
    )


def build_config(
    raw: object,
    *,
    sink_types: Mapping[str, SinkOptionsSource],
    base_dir: Path,
    env: Mapping[str, str],
    source: Path | None = None,
    repeats: Sequence[Repeat] = (),
) -> Config:
    """Validate an already-parsed YAML tree; ``sink_types`` as for :func:`load_config`.
    ``repeats``: the keys the file gave more than once, each a problem.

    Raises:
        ConfigError: listing every problem as ``key.path: message``.
    """
    walker = Walker(base_dir, env, inbound_secrets=INBOUND_SECRETS)
    for repeat in repeats:
        walker.fail(repeat.path, repeat.message)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"<top>: expected a mapping of sections, got {describe_raw(raw)}"])
    raw = dict(raw)
    extra: dict[str, object] = {"source": source}

    sinks: dict[str, SinkConfig[object]] = {}
    raw_sinks = raw.pop("sinks", None)
    if raw_sinks is None or raw_sinks == {}:
        walker.fail("sinks", "at least one sink is required")
    elif not isinstance(raw_sinks, dict):
        walker.fail("sinks", f"expected a mapping name -> sink, got {describe_raw(raw_sinks)}")
    else:
        for name, body in raw_sinks.items():
            sink = _load_sink(walker, str(name), body, sink_types)
            if isinstance(sink, SinkConfig):
                sinks[str(name)] = sink
    extra["sinks"] = MappingProxyType(sinks)

    routes = load_routes(walker, raw.pop("routes", None), raw_sinks)
    if routes is not None:
        extra["routes"] = routes

    raw_nats = raw.pop("nats", None)
    nats = load_nats(walker, raw_nats) if raw_nats is not None else None
    if isinstance(nats, NatsConfig):
        extra["nats"] = nats
    if nats is None or isinstance(nats, NatsConfig):  # an invalid section was reported already
        for name, sink in sinks.items():
            if isinstance(sink.options, NatsPublishing):
                for key, message in publish_problems(nats, name, sink.options):
                    walker.fail(key, message)

    raw_openmail = raw.pop("openmail", None)
    # A nats: section with problems still says whether it consumes: "nats.consume is not set"
    # would be one more problem, and a wrong one.
    consumes = (
        nats.consume is not None
        if isinstance(nats, NatsConfig)
        else isinstance(raw_nats, dict) and raw_nats.get("consume") is not None
    )
    openmail = _load_openmail(walker, raw_openmail, consumes_nats=consumes)
    if isinstance(openmail, OpenMailConfig):
        extra["openmail"] = openmail
        if isinstance(nats, NatsConfig) and openmail.webhook.enabled:
            # The NATS connection compares it with the server's limit, known once connected.
            extra["nats"] = dataclasses.replace(nats, webhook_max_body=openmail.webhook.max_body)

    raw_state = raw.pop("state", None)
    if raw_state is None or (isinstance(raw_state, dict) and "path" not in raw_state):
        raw_state = {**(raw_state or {}), "path": str(default_state_path(env, base_dir))}
    # Walked here, in the order Config's fields take, so that the files the sinks write are
    # compared with the state database's whatever else is wrong.
    state = walker.section("state", raw_state, StateConfig)
    if isinstance(state, StateConfig):
        extra["state"] = state
        check_state_path(walker, state.path)
    check_sink_files(walker, sinks, state.path if isinstance(state, StateConfig) else None)

    config = walker.section("", raw, Config, extra=extra)
    if isinstance(config, Config) and isinstance(openmail, OpenMailConfig):
        config = bind_attachments(walker, config)
    if isinstance(config, Config) and config.event_loop == "uvloop" and not uvloop_available():
        walker.fail("event_loop", "uvloop is not installed (pip install uvloop, or use auto)")
    if walker.problems or not isinstance(config, Config):
        raise ConfigError(walker.problems or ["<top>: invalid configuration"])
    return config


def bind_attachments(walker: Walker, config: Config) -> Config:
    """``config`` with each sink that fetches attachments given the bridge-wide facts it needs
    (``openmail.api_url``, ``openmail.api_key``, ``state.min_free``, the state directory). The
    key is needed even on a bridge whose OpenMail sources are off; a ``dir`` that can never hold
    a file is refused."""
    om, sinks = config.openmail, dict(config.sinks)
    for name, sink in config.sinks.items():
        options = sink.options
        option = getattr(options, "attachments", None)
        if not isinstance(option, AttachmentsConfig) or not option.fetch:
            continue
        if not dataclasses.is_dataclass(options) or isinstance(options, type):
            continue
        if om.api_key is None:
            walker.fail(
                f"sinks.{name}.attachments.fetch",
                "needs openmail.api_key: attachments are downloaded with it (also while "
                "openmail.websocket and openmail.webhook are disabled)",
            )
        bound = option.bound(
            api_url=om.api_base,
            api_key=om.api_key,
            min_free=config.state.min_free,
            state_dir=config.state.path.parent,
        )
        assert bound.dir is not None  # bound() defaults it
        verdict, message = check_directory(bound.dir)
        if verdict is Verdict.NEVER:
            walker.fail(f"sinks.{name}.attachments.dir", message)
        options = dataclasses.replace(options, attachments=bound)
        sinks[name] = dataclasses.replace(sink, options=options)
    return dataclasses.replace(config, sinks=MappingProxyType(sinks))


def _load_sink(
    walker: Walker, name: str, body: object, registry: Mapping[str, SinkOptionsSource]
) -> object:
    path = f"sinks.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return walker.fail(path, "sink names may use letters, digits, '_', '-' and '.' only")
    if not isinstance(body, dict):
        return walker.fail(path, f"expected a mapping with a type, got {describe_raw(body)}")
    kind = body.get("type")
    if kind is None:
        return walker.fail(f"{path}.type", f"is required (one of: {', '.join(registry)})")
    entry = registry.get(kind) if isinstance(kind, str) else None
    if entry is None:
        return walker.fail(
            f"{path}.type", f"unknown sink type {kind!r} (known: {', '.join(registry)})"
        )
    common = {k: v for k, v in body.items() if k in _SINK_COMMON}
    own = {k: v for k, v in body.items() if k not in _SINK_COMMON}
    # Both halves are read whatever the other's problems, so that all of them are reported.
    options = walker.section(path, own, entry.options)
    sink = walker.section(path, common, SinkConfig, extra={"name": name, "options": options})
    if options is INVALID or not isinstance(sink, SinkConfig):
        return INVALID
    before = len(walker.problems)
    _check_deliverable(walker, path, options)
    if sink.retry.initial <= 0:  # no wait between attempts: a failing agent hammered for ever
        walker.fail(f"{path}.retry.initial", "must be more than 0")
    elif sink.retry.max < sink.retry.initial:
        walker.fail(f"{path}.retry.max", "must not be less than retry.initial")
    if getattr(options, "format", None) == "batch" and not sink.debounce:
        walker.fail(
            f"{path}.format", "batch sends a debounce window's events together: set debounce"
        )
    return sink if len(walker.problems) == before else INVALID


def _check_deliverable(walker: Walker, path: str, options: object) -> None:
    """A file the sink could never write: refused here rather than retried until dead. Read off
    any sink type's options by name: ``path`` (a path) is a file the sink appends to. (A sink's
    own rules, such as HTTP auth that conflicts, are its options' ``__post_init__``.)
    """
    file = getattr(options, "path", None)
    if isinstance(file, Path):
        verdict, message = check_directory(fixed_directory(str(file)))
        if verdict is Verdict.NEVER:
            walker.fail(f"{path}.path", message)


def load_routes(walker: Walker, raw: object, raw_sinks: object) -> tuple[RouteConfig, ...] | None:
    """Routes in order, checked against the names in ``raw_sinks``; None after a problem with
    the list itself. Omitted: one route sending every event to every sink."""
    known = {str(k) for k in raw_sinks} if isinstance(raw_sinks, dict) else set()
    if raw is None:
        return (RouteConfig(name="default", sinks=tuple(known)),) if known else ()
    if not isinstance(raw, list):
        walker.fail("routes", f"expected a list of routes, got {describe_raw(raw)}")
        return None
    routes: list[RouteConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        path = f"routes[{i}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            path = f"routes[{i}] ({item['name']})"
        route = walker.section(path, item, RouteConfig)
        # The sinks a route names are checked even when another of its keys is wrong.
        given = item.get("sinks") if isinstance(item, dict) else None
        names_known = ", ".join(sorted(known)) or "none"
        for j, sink in enumerate(given if isinstance(given, list) else ()):
            # A number is read as its text: `- 0` names a sink "0", which must exist too.
            if isinstance(sink, str | int | float) and str(sink) not in known:
                walker.fail(
                    f"{path}.sinks[{j}]", f"no sink named {str(sink)!r} (sinks: {names_known})"
                )
        if not isinstance(route, RouteConfig):
            continue
        if route.name in names:
            walker.fail(f"{path}.name", f"duplicate route name {route.name!r}")
        names.add(route.name)
        if not route.sinks:
            walker.fail(f"{path}.sinks", "names no sink")
        _check_gate(walker, path, route, known)
        routes.append(route)
    return tuple(routes)


def _check_gate(walker: Walker, path: str, route: RouteConfig, known: set[str]) -> None:
    """The sinks a route's guard and limits name exist, and ``over: quarantine`` has one."""
    guard = route.guard_config
    quarantine = guard.quarantine if guard is not None else None
    if quarantine is not None and quarantine not in known:
        names_known = ", ".join(sorted(known)) or "none"
        walker.fail(
            f"{path}.guard.quarantine", f"no sink named {quarantine!r} (sinks: {names_known})"
        )
    if route.limits.over == "quarantine" and route.limits.active and quarantine is None:
        walker.fail(
            f"{path}.limits.over",
            "quarantine needs a quarantine sink: set guard.quarantine (or over: hold / drop)",
        )


def _load_openmail(walker: Walker, given: object, *, consumes_nats: bool) -> object:
    """``consumes_nats``: ``nats.consume`` is set, so the bridge has a source even with both
    OpenMail transports disabled (a pure sidecar, which needs no API key)."""
    if (raw := walker.mapping("openmail", given)) is None:
        return INVALID
    webhook_raw = raw.pop("webhook", None)
    extra: dict[str, object] = {}
    webhook = _load_webhook(walker, webhook_raw)
    if isinstance(webhook, WebhookConfig):
        extra["webhook"] = webhook
    om = walker.section("openmail", raw, OpenMailConfig, extra=extra)
    if not isinstance(om, OpenMailConfig):
        return INVALID
    ws, before = om.websocket, len(walker.problems)
    # Every rule is checked, so that all problems are reported at once.
    if ws.reconnect.initial <= 0:
        walker.fail("openmail.websocket.reconnect.initial", "must be more than 0")
    if ws.reconnect.max < ws.reconnect.initial:
        walker.fail("openmail.websocket.reconnect.max", "must not be less than reconnect.initial")
    if ws.ping_interval <= 0:
        walker.fail("openmail.websocket.ping_interval", "must be more than 0")
    elif ws.stale_after <= ws.ping_interval:
        walker.fail(
            "openmail.websocket.stale_after",
            f"must be longer than ping_interval ({ws.ping_interval:g}s): the pings are what "
            "keeps a healthy connection from looking stale",
        )
    if ws.subscribe_timeout <= 0:
        walker.fail("openmail.websocket.subscribe_timeout", "must be more than 0")
    if ws.enabled and om.api_key is None:
        walker.fail("openmail.api_key", "is required while openmail.websocket.enabled is true")
    if not ws.enabled and not om.webhook.enabled and not consumes_nats:
        walker.fail(
            "openmail",
            "both websocket and webhook are disabled and nats.consume is not set: nothing "
            "would receive events",
        )
    return om if len(walker.problems) == before else INVALID


def _load_webhook(walker: Walker, given: object) -> object:
    if (raw := walker.mapping("openmail.webhook", given)) is None:
        return INVALID
    extra: dict[str, object] = {}
    secrets_ok = True  # a bad secrets list must not also report "secret is required"
    if "secrets_file" in raw:
        raw_file = raw.pop("secrets_file")
        if "secrets" in raw:
            walker.fail("openmail.webhook.secrets", "give either secrets or secrets_file, not both")
            raw.pop("secrets")
            secrets_ok = False
        else:
            lines = walker.read_secret_file("openmail.webhook.secrets_file", raw_file)
            if isinstance(lines, Secret):
                raw["secrets"] = [s for s in lines.get().splitlines() if s.strip()]
            else:
                secrets_ok = False
    if "secrets" in raw:
        parsed = _parse_webhook_secrets(walker, "openmail.webhook.secrets", raw.pop("secrets"))
        if isinstance(parsed, dict):
            extra["inbox_secrets"] = MappingProxyType(parsed["__map__"])
        elif isinstance(parsed, tuple):
            extra["secrets"] = parsed
        else:
            secrets_ok = False
    webhook = walker.section("openmail.webhook", raw, WebhookConfig, extra=extra)
    if not isinstance(webhook, WebhookConfig) or not secrets_ok:
        return INVALID
    if webhook.enabled and not webhook.account_secrets and not webhook.inbox_secrets:
        return walker.fail(
            "openmail.webhook.secret",
            "is required while openmail.webhook.enabled is true (or give secrets:)",
        )
    if not webhook.path.startswith("/"):
        return walker.fail("openmail.webhook.path", f"must start with '/', got {webhook.path!r}")
    problems: list[tuple[str, str]] = [
        (key, "must be more than 0s")
        for key in ("header_timeout", "body_timeout", "keepalive_timeout")
        if getattr(webhook, key) <= 0
    ]
    if webhook.buffer_limit < webhook.max_body:
        problems.append(
            (
                "max_buffered_bytes",
                f"is {webhook.buffer_limit} bytes, less than max_body ({webhook.max_body}): "
                "a body of the allowed size could never be read",
            )
        )
    for key, message in problems:
        walker.fail(f"openmail.webhook.{key}", message)
    return INVALID if problems else webhook
