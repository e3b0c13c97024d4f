"""Loading: YAML walked beside the schema's type hints, every problem collected with its key path.

``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` are expanded in every string value; an unset
``VAR`` falls back to the file named by ``VAR_FILE``. ``describe`` renders a config with its secrets
masked, for ``check`` and ``/status``; ``config_warnings`` lists what is valid but unsafe, for
``check`` to print and the supervisor to log at start.

One module past the usual size on purpose: the generic walk and the few section-specific rules
(sinks by ``type:``, routes naming sinks, webhook secret forms) share the loader's problem list and
read best side by side.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import ipaddress
import math
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Final, Literal, Union

import yaml

from bridge import protocol, redact
from bridge.config.schema import Config, OpenMailConfig, RouteConfig, SinkConfig, WebhookConfig
from bridge.config.values import (
    Kind,
    Listen,
    Secret,
    is_ascii_digits,
    parse_duration,
    parse_listen,
    parse_size,
)
from bridge.errors import ConfigError

# --- Loading -----------------------------------------------------------------------------------

_ENV_RE: Final = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}|\$\$")
_INVALID: Final = object()
_SINK_COMMON: Final = frozenset({"type", "ordering", "concurrency", "retry"})


class _Loader:
    """Walks raw YAML beside type hints, collecting every problem with its key path."""

    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.base_dir = base_dir
        self.env = env
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> object:
        self.problems.append(f"{path or '<top>'}: {message}")
        return _INVALID

    # Strings: ${VAR} interpolation happens on every scalar string before conversion.
    def interpolate(self, path: str, text: str) -> str | None:
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, op, arg = match.group(1), match.group(2), match.group(3)
            value = self.env.get(name)
            if value is None and self.env.get(f"{name}_FILE"):
                value, problem = self.env_file(name)
                if problem:
                    missing.append(problem)
                    return ""
            if op == ":-":
                return value if value else arg
            if op == ":?":
                if not value:
                    missing.append(f"{arg or 'must be set'} (${{{name}}} is unset or empty)")
                    return ""
                return value
            if value is None:
                missing.append(f"environment variable {name} is not set (${{{name}}})")
                return ""
            return value

        result = _ENV_RE.sub(replace, text)
        for message in missing:
            self.fail(path, message)
        return None if missing else result

    def env_file(self, name: str) -> tuple[str, str | None]:
        """``${VAR}`` with VAR unset and ``VAR_FILE`` set reads that file (container secrets).
        Returns the value and a problem, if any."""
        file = Path(self.env[f"{name}_FILE"])
        try:
            return file.read_text(encoding="utf-8").strip(), None
        except OSError as exc:
            return "", f"cannot read {name}_FILE={file}: {exc.strerror or exc}"
        except UnicodeDecodeError:
            return "", f"cannot read {name}_FILE={file}: not UTF-8 text"
        except ValueError as exc:  # a NUL character in the file name
            return "", f"cannot read {name}_FILE={str(file)!r}: {exc}"

    def scalar_text(self, path: str, raw: object, what: str) -> str | None:
        if isinstance(raw, bool) or not isinstance(raw, str | int | float):
            self.fail(path, f"expected {what}, got {_describe(raw)}")
            return None
        return self.interpolate(path, raw) if isinstance(raw, str) else str(raw)

    def convert(self, path: str, raw: object, hint: object) -> object:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            base, kind = typing.get_args(hint)[:2]
            return self.convert_kind(path, raw, base, kind)
        if origin in (Union, types.UnionType):
            options = [a for a in typing.get_args(hint) if a is not type(None)]
            if raw is None:
                return None
            return self.convert(path, raw, options[0])
        if origin is Literal:
            choices = typing.get_args(hint)
            text = self.scalar_text(path, raw, "one of " + ", ".join(map(str, choices)))
            if text is None:
                return _INVALID
            if text not in choices:
                return self.fail(path, f"{text!r} is not one of: {', '.join(map(str, choices))}")
            return text
        if origin in (dict, Mapping, collections.abc.Mapping):
            value_hint = typing.get_args(hint)[1]
            if raw is None:
                return {}
            if not isinstance(raw, dict):
                return self.fail(path, f"expected a mapping, got {_describe(raw)}")
            mapping = {str(k): self.convert(f"{path}.{k}", v, value_hint) for k, v in raw.items()}
            # Read-only, so a frozen section cannot be changed through one of its maps.
            return _INVALID if _INVALID in mapping.values() else MappingProxyType(mapping)
        if origin is tuple:
            (item,) = typing.get_args(hint)[:1]
            if raw is None:
                return ()
            if not isinstance(raw, list):
                return self.fail(path, f"expected a list, got {_describe(raw)}")
            items = [self.convert(f"{path}[{i}]", v, item) for i, v in enumerate(raw)]
            return _INVALID if _INVALID in items else tuple(items)
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str):
                text = self.interpolate(path, raw)
                if text is None:
                    return _INVALID
                if text.lower() in ("true", "yes", "on", "1"):
                    return True
                if text.lower() in ("false", "no", "off", "0"):
                    return False
            return self.fail(path, f"expected true or false, got {_describe(raw)}")
        if hint is int:
            text = self.scalar_text(path, raw, "a whole number")
            if text is None:
                return _INVALID
            if not is_ascii_digits(text.strip()):
                return self.fail(path, f"expected a whole number >= 0, got {text!r}")
            return int(text)
        if hint is str:
            text = self.scalar_text(path, raw, "a string")
            return _INVALID if text is None else text
        if hint is Secret:
            text = self.scalar_text(path, raw, "a string")
            if text is None:
                return _INVALID
            if not text.strip():
                return self.fail(path, "is empty (an empty secret would accept anything)")
            return Secret(text)
        if hint is Listen:
            text = self.scalar_text(path, raw, "a host:port address")
            if text is None:
                return _INVALID
            try:
                return parse_listen(text)
            except ValueError as exc:
                return self.fail(path, str(exc))
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return self.section(path, raw, hint)
        raise TypeError(f"config loader cannot handle {hint!r} at {path}")  # a programming error

    def convert_kind(self, path: str, raw: object, base: object, kind: object) -> object:
        if not isinstance(kind, Kind):
            return self.convert(path, raw, base)
        if (
            kind is Kind.DURATION
            and isinstance(raw, int | float)
            and not isinstance(raw, bool)
            and math.isfinite(raw)
        ):
            return self.fail(path, f"{raw} has no unit; write e.g. {raw}s or {raw}ms")
        text = self.scalar_text(path, raw, kind.value)
        if text is None:
            return _INVALID
        try:
            if kind is Kind.DURATION:
                return parse_duration(text)
            if kind is Kind.SIZE:
                return parse_size(text)
        except ValueError as exc:
            return self.fail(path, str(exc))
        if kind is Kind.PATH:
            if not text.strip():
                return self.fail(path, "is empty")
            resolved = self.resolve_path(path, text)
            return _INVALID if resolved is None else resolved
        schemes = ("http", "https") if kind is Kind.HTTP_URL else ("ws", "wss")
        try:
            parts = urllib.parse.urlsplit(text.strip())
            _ = parts.port  # raises for a port that is not a number in 0-65535
        except ValueError:  # also "http://[x": an unclosed IPv6 host
            return self.fail(path, f"not {kind.value}")
        if parts.scheme not in schemes or not parts.hostname:
            return self.fail(path, f"not {kind.value}")
        return text.strip()

    def resolve_path(self, path: str, text: str) -> Path | None:
        """``text`` as a path, relative to the config file's directory; None after a problem."""
        if "\x00" in text:
            self.fail(path, "a path cannot contain a NUL character")
            return None
        try:
            file = Path(text).expanduser()
        except RuntimeError:  # ~name for a user that does not exist
            self.fail(path, f"cannot expand {text!r}: no such user")
            return None
        return file if file.is_absolute() else self.base_dir / file

    def read_secret_file(self, path: str, raw: object) -> object:
        text = self.scalar_text(path, raw, "a file path")
        if text is None:
            return _INVALID
        file = self.resolve_path(path, text)
        if file is None:
            return _INVALID
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return self.fail(path, f"cannot read {file}: {exc.strerror or exc}")
        except UnicodeDecodeError:
            return self.fail(path, f"cannot read {file}: not UTF-8 text")
        if not value:
            return self.fail(path, f"{file} is empty (an empty secret would accept anything)")
        return Secret(value)

    def section(
        self, path: str, raw: object, cls: type, *, extra: Mapping[str, object] | None = None
    ) -> object:
        """Build dataclass ``cls`` from mapping ``raw``: unknown keys, missing ones, bad values."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return self.fail(path, f"expected a mapping, got {_describe(raw)}")
        hints = typing.get_type_hints(cls, include_extras=True)
        values: dict[str, object] = dict(extra or {})
        seen: set[str] = set()
        ok = True
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal") or f.name in values:
                continue
            key = f.metadata.get("key", f.name)
            sub = f"{path}.{key}" if path else key
            hint = hints[f.name]
            if _is_secret(hint) and f"{key}_file" in raw:
                seen.add(f"{key}_file")
                if key in raw:
                    seen.add(key)
                    self.fail(sub, f"give either {key} or {key}_file, not both")
                    ok = False
                    continue
                value = self.read_secret_file(f"{sub}_file", raw[f"{key}_file"])
            elif key in raw:
                seen.add(key)
                value = self.convert(sub, raw[key], hint)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.fail(sub, "is required")
                ok = False
                continue
            else:
                continue
            if value is _INVALID:
                ok = False
            else:
                values[f.name] = value
        for key in raw:
            if key not in seen:
                ok = False
                suggestion = _closest(
                    str(key),
                    [
                        f.metadata.get("key", f.name)
                        for f in dataclasses.fields(cls)
                        if not f.metadata.get("internal")
                    ],
                )
                self.fail(f"{path}.{key}" if path else str(key), "unknown key" + suggestion)
        if not ok:
            return _INVALID
        try:
            return cls(**values)
        except TypeError as exc:  # a required field the loop reported missing already
            return self.fail(path, str(exc))
        except ValueError as exc:
            # A section's own check (``__post_init__``) says "key: problem" about one of its keys.
            key, sep, message = str(exc).partition(": ")
            if sep and key in {f.metadata.get("key", f.name) for f in dataclasses.fields(cls)}:
                return self.fail(f"{path}.{key}" if path else key, message)
            return self.fail(path, str(exc))


def _is_secret(hint: object) -> bool:
    return hint is Secret or Secret in typing.get_args(hint)


def _describe(raw: object) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, bool):
        return f"a boolean ({str(raw).lower()})"
    if isinstance(raw, dict):
        return "a mapping"
    if isinstance(raw, list):
        return "a list"
    return f"{type(raw).__name__} {raw!r}"


def _closest(key: str, known: list[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _parse_webhook_secrets(loader: _Loader, path: str, raw: object) -> object:
    """``secrets:`` is a list (account-level, rotation) or a map ``inbox_id -> secret``."""
    if isinstance(raw, list):
        return loader.convert(path, raw, tuple[Secret, ...])
    if isinstance(raw, dict):
        result: dict[str, Secret] = {}
        ok = True
        for key, value in raw.items():
            inbox = str(key)
            if inbox.endswith("_file"):
                inbox = inbox.removesuffix("_file")
                if inbox in raw:
                    loader.fail(f"{path}.{inbox}", f"give either {inbox} or {key}, not both")
                    ok = False
                    continue
                secret = loader.read_secret_file(f"{path}.{key}", value)
            else:
                secret = loader.convert(f"{path}.{inbox}", value, Secret)
            if isinstance(secret, Secret):
                result[inbox] = secret
            else:
                ok = False
        return {"__map__": result} if ok else _INVALID
    return loader.fail(
        path, f"expected a list of secrets or a map inbox_id -> secret, got {_describe(raw)}"
    )


def _default_state_path(env: Mapping[str, str], base_dir: Path) -> Path:
    state_dir = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir:
        return Path(state_dir) / "bridge.db"
    return base_dir / "state" / "bridge.db"


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate a config file (or ``text``, resolved against the current directory).

    Raises:
        ConfigError: listing every problem as ``key.path: message``.
    """
    env = os.environ if env is None else env
    if text is None:
        if path is None:
            raise ConfigError(["<config>: no config file given"])
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{file}: cannot read config file: {exc.strerror or exc}"]) from None
        source: Path | None = file.resolve()
        base_dir = file.resolve().parent
    else:
        source, base_dir = None, Path.cwd()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = " (a ${...} value inside a {...} flow mapping must be quoted)" if "{" in text else ""
        raise ConfigError([f"<yaml>: not valid YAML{line}: {problem}{hint}"]) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer too long to convert
        raise ConfigError([f"<yaml>: cannot read the YAML: {str(exc)[:200]}"]) from None
    return build_config(raw, base_dir=base_dir, env=env, source=source)


def build_config(
    raw: object, *, base_dir: Path, env: Mapping[str, str], source: Path | None = None
) -> Config:
    """Validate an already-parsed YAML tree. Raises ConfigError."""
    from bridge.sinks import SINK_TYPES  # sinks import this module for their option types

    loader = _Loader(base_dir, env)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"<top>: expected a mapping of sections, got {_describe(raw)}"])
    raw = dict(raw)
    extra: dict[str, object] = {"source": source}

    sinks: dict[str, SinkConfig] = {}
    raw_sinks = raw.pop("sinks", None)
    if raw_sinks is None or raw_sinks == {}:
        loader.fail("sinks", "at least one sink is required")
    elif not isinstance(raw_sinks, dict):
        loader.fail("sinks", f"expected a mapping name -> sink, got {_describe(raw_sinks)}")
    else:
        for name, body in raw_sinks.items():
            sink = _load_sink(loader, str(name), body, SINK_TYPES)
            if isinstance(sink, SinkConfig):
                sinks[str(name)] = sink
    extra["sinks"] = MappingProxyType(sinks)

    routes = _load_routes(loader, raw.pop("routes", None), raw_sinks)
    if routes is not None:
        extra["routes"] = routes

    raw_openmail = raw.pop("openmail", None)
    openmail = _load_openmail(loader, raw_openmail)
    if isinstance(openmail, OpenMailConfig):
        extra["openmail"] = openmail

    raw_state = raw.get("state")
    if raw_state is None or (isinstance(raw_state, dict) and "path" not in raw_state):
        raw["state"] = {**(raw_state or {}), "path": str(_default_state_path(env, base_dir))}

    config = loader.section("", raw, Config, extra=extra)
    if loader.problems or not isinstance(config, Config):
        raise ConfigError(loader.problems or ["<top>: invalid configuration"])
    return config


def _load_sink(loader: _Loader, name: str, body: object, registry: Mapping[str, object]) -> object:
    from bridge.sinks import SinkType

    path = f"sinks.{name}"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        return loader.fail(path, "sink names may use letters, digits, '_', '-' and '.' only")
    if not isinstance(body, dict):
        return loader.fail(path, f"expected a mapping with a type, got {_describe(body)}")
    kind = body.get("type")
    if kind is None:
        return loader.fail(f"{path}.type", f"is required (one of: {', '.join(registry)})")
    entry = registry.get(kind) if isinstance(kind, str) else None
    if not isinstance(entry, SinkType):
        return loader.fail(
            f"{path}.type", f"unknown sink type {kind!r} (known: {', '.join(registry)})"
        )
    common = {k: v for k, v in body.items() if k in _SINK_COMMON}
    own = {k: v for k, v in body.items() if k not in _SINK_COMMON}
    options = loader.section(path, own, entry.options)
    if options is _INVALID:
        return _INVALID
    sink = loader.section(path, common, SinkConfig, extra={"name": name, "options": options})
    if isinstance(sink, SinkConfig) and sink.concurrency < 1:
        return loader.fail(f"{path}.concurrency", "must be at least 1")
    return sink


def _load_routes(loader: _Loader, raw: object, raw_sinks: object) -> tuple[RouteConfig, ...] | None:
    """Routes in order. Omitted: one route sending every event to every sink."""
    known = {str(k) for k in raw_sinks} if isinstance(raw_sinks, dict) else set()
    if raw is None:
        return (RouteConfig(name="default", sinks=tuple(known)),) if known else ()
    if not isinstance(raw, list):
        loader.fail("routes", f"expected a list of routes, got {_describe(raw)}")
        return None
    routes: list[RouteConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        path = f"routes[{i}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            path = f"routes[{i}] ({item['name']})"
        route = loader.section(path, item, RouteConfig)
        if not isinstance(route, RouteConfig):
            continue
        if route.name in names:
            loader.fail(f"{path}.name", f"duplicate route name {route.name!r}")
        names.add(route.name)
        if not route.sinks:
            loader.fail(f"{path}.sinks", "names no sink")
        names_known = ", ".join(sorted(known)) or "none"
        for j, sink in enumerate(route.sinks):
            if sink not in known:
                loader.fail(f"{path}.sinks[{j}]", f"no sink named {sink!r} (sinks: {names_known})")
        routes.append(route)
    return tuple(routes)


def _load_openmail(loader: _Loader, raw: object) -> object:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return loader.fail("openmail", f"expected a mapping, got {_describe(raw)}")
    raw = dict(raw)
    webhook_raw = raw.pop("webhook", None)
    extra: dict[str, object] = {}
    webhook = _load_webhook(loader, webhook_raw)
    if isinstance(webhook, WebhookConfig):
        extra["webhook"] = webhook
    om = loader.section("openmail", raw, OpenMailConfig, extra=extra)
    if not isinstance(om, OpenMailConfig):
        return _INVALID
    ws, before = om.websocket, len(loader.problems)
    # Every rule is checked, so that all problems are reported at once.
    if not 1 <= ws.max_in_flight <= protocol.REPLAY_LIMIT:
        limit = protocol.REPLAY_LIMIT
        message = f"must be between 1 and {limit} (OpenMail replays at most that many)"
        loader.fail("openmail.websocket.max_in_flight", message)
    if ws.reconnect.initial <= 0:
        loader.fail("openmail.websocket.reconnect.initial", "must be more than 0")
    if ws.reconnect.max < ws.reconnect.initial:
        loader.fail("openmail.websocket.reconnect.max", "must not be less than reconnect.initial")
    if ws.ping_interval <= 0:
        loader.fail("openmail.websocket.ping_interval", "must be more than 0")
    elif ws.stale_after <= ws.ping_interval:
        loader.fail(
            "openmail.websocket.stale_after",
            f"must be longer than ping_interval ({ws.ping_interval:g}s): the pings are what "
            "keeps a healthy connection from looking stale",
        )
    if ws.subscribe_timeout <= 0:
        loader.fail("openmail.websocket.subscribe_timeout", "must be more than 0")
    if ws.enabled and om.api_key is None:
        loader.fail("openmail.api_key", "is required while openmail.websocket.enabled is true")
    if not ws.enabled and not om.webhook.enabled:
        loader.fail(
            "openmail", "both websocket and webhook are disabled: nothing would receive events"
        )
    return om if len(loader.problems) == before else _INVALID


def _load_webhook(loader: _Loader, raw: object) -> object:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return loader.fail("openmail.webhook", f"expected a mapping, got {_describe(raw)}")
    raw = dict(raw)
    extra: dict[str, object] = {}
    secrets_ok = True  # a bad secrets list must not also report "secret is required"
    if "secrets_file" in raw:
        raw_file = raw.pop("secrets_file")
        if "secrets" in raw:
            loader.fail("openmail.webhook.secrets", "give either secrets or secrets_file, not both")
            raw.pop("secrets")
            secrets_ok = False
        else:
            lines = loader.read_secret_file("openmail.webhook.secrets_file", raw_file)
            if isinstance(lines, Secret):
                raw["secrets"] = [s for s in lines.get().splitlines() if s.strip()]
            else:
                secrets_ok = False
    if "secrets" in raw:
        parsed = _parse_webhook_secrets(loader, "openmail.webhook.secrets", raw.pop("secrets"))
        if isinstance(parsed, dict):
            extra["inbox_secrets"] = MappingProxyType(parsed["__map__"])
        elif isinstance(parsed, tuple):
            extra["secrets"] = parsed
        else:
            secrets_ok = False
    webhook = loader.section("openmail.webhook", raw, WebhookConfig, extra=extra)
    if not isinstance(webhook, WebhookConfig) or not secrets_ok:
        return _INVALID
    if webhook.enabled and not webhook.account_secrets and not webhook.inbox_secrets:
        return loader.fail(
            "openmail.webhook.secret",
            "is required while openmail.webhook.enabled is true (or give secrets:)",
        )
    if not webhook.path.startswith("/"):
        return loader.fail("openmail.webhook.path", f"must start with '/', got {webhook.path!r}")
    problems: list[tuple[str, str]] = [
        (key, "must be more than 0s")
        for key in ("header_timeout", "body_timeout", "keepalive_timeout")
        if getattr(webhook, key) <= 0
    ]
    if webhook.max_connections is not None and webhook.max_connections < 1:
        problems.append(("max_connections", "must be at least 1"))
    if webhook.buffer_limit < webhook.max_body:
        problems.append(
            (
                "max_buffered_bytes",
                f"is {webhook.buffer_limit} bytes, less than max_body ({webhook.max_body}): "
                "a body of the allowed size could never be read",
            )
        )
    for key, message in problems:
        loader.fail(f"openmail.webhook.{key}", message)
    return _INVALID if problems else webhook


# --- Presentation ------------------------------------------------------------------------------


def describe(value: object) -> object:
    """A JSON-able view of a config with every secret masked, for ``check`` and ``/status``.

    Masked: ``Secret`` values; every value of a field whose metadata says ``masked`` (an HTTP
    sink's ``headers``: names shown, values not); user-info and secret-looking query values of
    any URL. ``check``'s output reaches the journal through the systemd unit's ``ExecStartPre``.
    """
    if isinstance(value, Secret):
        return redact.MASK
    if isinstance(value, Listen | Path):
        return str(value)
    if isinstance(value, str):
        return redact.mask_url(value) if "://" in value else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            if f.metadata.get("internal"):
                continue
            field_value = getattr(value, f.name)
            masked = f.metadata.get("masked")
            shown = _masked(field_value) if masked else describe(field_value)
            out[f.metadata.get("key", f.name)] = shown
        if isinstance(value, SinkConfig):
            options = out.pop("options")
            out.pop("name")
            if isinstance(options, dict):
                out.update(options)
        return out
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [describe(v) for v in value]
    return value


def _masked(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): redact.MASK for k in value}
    if isinstance(value, tuple | list):
        return [redact.MASK for _ in value]
    return None if value is None else redact.MASK


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigWarning:
    """Valid but unsafe: the bridge runs, and says so."""

    event: str
    """The log event name the supervisor logs it under."""
    key: str
    """The key path it is about."""
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def config_warnings(config: Config) -> list[ConfigWarning]:
    """What ``check`` prints as warnings and the supervisor logs at start."""
    warnings: list[ConfigWarning] = []
    ws = config.openmail.websocket
    if ws.enabled:
        parts = urllib.parse.urlsplit(ws.url)  # the loader checked it parses
        if parts.scheme == "ws" and not _is_loopback_host(parts.hostname or ""):
            warnings.append(
                ConfigWarning(
                    "config.websocket_cleartext",
                    "openmail.websocket.url",
                    f"ws:// to {parts.hostname} is not encrypted: the API key travels in clear "
                    "(use wss://)",
                )
            )
    admin = config.admin
    if admin.enabled and admin.token is None and not admin.listen.is_loopback:
        warnings.append(
            ConfigWarning(
                "admin.private_paths_disabled",
                "admin.token",
                f"is not set and admin.listen ({admin.listen}) is not a loopback address: "
                "/status and the other private paths answer 403 (/healthz, /readyz and "
                "/metrics still answer); set admin.token to use them",
            )
        )
    return warnings


def _is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
