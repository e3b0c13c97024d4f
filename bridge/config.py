"""Configuration: YAML parsed once into frozen, typed objects, every problem named by its key path.

One loader walks the YAML tree beside the dataclasses' type hints, so a section is declared once,
as a dataclass, and validated by its annotations: ``Duration`` (``500ms``, ``20s``, ``5m``, ``24h``,
``7d``), ``ByteSize`` (``64KiB``, ``10MiB``), ``Secret`` (also as ``<key>_file: PATH``),
``FilePath`` (relative to the config file), ``HttpUrl``, ``WsUrl``, ``Listen`` (``host:port``),
``Literal`` choices, tuples, maps and nested sections. Sink types bring their own option
dataclasses (``bridge.sinks.SINK_TYPES``).
``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}`` are expanded in every string value.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import math
import os
import re
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Literal, Union

import yaml

from bridge import protocol
from bridge.errors import ConfigError

# --- Value types -------------------------------------------------------------------------------


class _Kind(enum.Enum):
    DURATION = "a duration such as 500ms, 20s, 5m, 24h or 7d"
    SIZE = "a size such as 64KiB or 10MiB"
    HTTP_URL = "an http(s) URL"
    WS_URL = "a ws(s) URL"
    PATH = "a file path"


Duration = Annotated[float, _Kind.DURATION]
"""Seconds, written with a unit."""
ByteSize = Annotated[int, _Kind.SIZE]
HttpUrl = Annotated[str, _Kind.HTTP_URL]
WsUrl = Annotated[str, _Kind.WS_URL]
FilePath = Annotated[Path, _Kind.PATH]


class Secret:
    """A secret value; its ``repr`` and ``str`` never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Listen:
    """A ``host:port`` to bind."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|k|K|M|G)?\s*$")
_SIZE_UNITS: Final = {
    None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "k": 1 << 10, "K": 1 << 10,
    "M": 1 << 20, "G": 1 << 30,
}  # fmt: skip


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() also accepts characters such as '²' that int() rejects.
    return text.isascii() and text.isdigit()


def parse_duration(text: str) -> float:
    """``"500ms"`` -> 0.5. Raises ValueError."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"not {_Kind.DURATION.value}: {text!r}")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds):  # hundreds of digits overflow to inf
        raise ValueError(f"{text!r} is too large")
    return seconds


def parse_size(text: str) -> int:
    """``"10MiB"`` -> 10485760. Raises ValueError."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError(f"not {_Kind.SIZE.value}: {text!r}")
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not math.isfinite(size):  # int(inf) would raise OverflowError
        raise ValueError(f"{text!r} is too large")
    return int(size)


def parse_listen(text: str) -> Listen:
    """``"127.0.0.1:8080"``, ``"[::1]:8080"`` or ``":8080"`` (all interfaces). Raises ValueError."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not _is_ascii_digits(port_text):
        raise ValueError(f"not a host:port address: {text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Listen(host or "0.0.0.0", port)


# --- Sections ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectConfig:
    initial: Duration = 1.0
    max: Duration = 30.0
    reset_after: Duration = 60.0
    """A connection that stayed up this long resets the backoff."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConfig:
    enabled: bool = True
    url: WsUrl = protocol.DEFAULT_WS_URL
    inbox_ids: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    subscribe_timeout: Duration = 10.0
    ping_interval: Duration = 20.0
    """Both a WebSocket ping and a protocol ``ping`` are sent this often."""
    stale_after: Duration = 45.0
    """No frame or pong for this long: the connection is dead, reconnect."""
    max_in_flight: int = 64
    """Events read from the socket but not yet committed. Bounds memory, and stays under the
    replay limit so a reconnect after a failed commit replays every one of them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    cert: FilePath
    key: FilePath


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    enabled: bool = True
    listen: Listen = Listen("127.0.0.1", 8080)
    path: str = "/webhooks"
    secret: Secret | None = None
    secrets: tuple[Secret, ...] = ()
    """Extra account-level secrets, any of which verifies any event (rotation)."""
    inbox_secrets: Mapping[str, Secret] = field(default_factory=dict)
    """``secrets:`` given as a map: an inbox's event verifies only with its own secret."""
    tolerance: Duration = protocol.WEBHOOK_TOLERANCE
    max_body: ByteSize = 10 << 20
    tls: TlsConfig | None = None

    @property
    def account_secrets(self) -> tuple[Secret, ...]:
        return ((self.secret,) if self.secret else ()) + self.secrets


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenMailConfig:
    api_key: Secret | None = None
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    path: FilePath = Path("state/bridge.db")
    max_bytes: ByteSize = 1 << 30
    min_free: ByteSize = 256 << 20
    dedup_window: Duration = 7 * 86400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    enabled: bool = True
    listen: Listen = Listen("127.0.0.1", 9464)
    token: Secret | None = None


LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console", "auto"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    initial: Duration = 1.0
    max: Duration = 300.0
    max_age: Duration = 86400.0
    max_attempts: int = 0
    """0 = no cap on attempts (``max_age`` still applies)."""


Ordering = Literal["thread", "none", "strict"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig:
    """Options every sink has, plus ``options``: the dataclass its ``type`` declares."""

    name: str
    type: str
    options: object
    ordering: Ordering = "thread"
    concurrency: int = 4
    retry: RetryConfig = field(default_factory=RetryConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    inbox_ids: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    senders: tuple[str, ...] = field(default=(), metadata={"key": "from"})
    recipients: tuple[str, ...] = field(default=(), metadata={"key": "to"})


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    name: str
    sinks: tuple[str, ...]
    match: RouteMatch = field(default_factory=RouteMatch)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    openmail: OpenMailConfig = field(default_factory=OpenMailConfig)
    state: StateConfig = field(default_factory=StateConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sinks: Mapping[str, SinkConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    shutdown_timeout: Duration = 10.0
    source: Path | None = field(default=None, metadata={"internal": True})
    """The file this config was read from."""


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
            return _INVALID if _INVALID in mapping.values() else mapping
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
            if not _is_ascii_digits(text.strip()):
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
        if not isinstance(kind, _Kind):
            return self.convert(path, raw, base)
        if (kind is _Kind.DURATION and isinstance(raw, int | float) and not isinstance(raw, bool)
                and math.isfinite(raw)):  # fmt: skip
            return self.fail(path, f"{raw} has no unit; write e.g. {raw}s or {raw}ms")
        text = self.scalar_text(path, raw, kind.value)
        if text is None:
            return _INVALID
        try:
            if kind is _Kind.DURATION:
                return parse_duration(text)
            if kind is _Kind.SIZE:
                return parse_size(text)
        except ValueError as exc:
            return self.fail(path, str(exc))
        if kind is _Kind.PATH:
            if not text.strip():
                return self.fail(path, "is empty")
            resolved = self.resolve_path(path, text)
            return _INVALID if resolved is None else resolved
        schemes = ("http", "https") if kind is _Kind.HTTP_URL else ("ws", "wss")
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
                suggestion = _closest(str(key), [f.metadata.get("key", f.name) for f in
                                                 dataclasses.fields(cls)
                                                 if not f.metadata.get("internal")])  # fmt: skip
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
    return loader.fail(path, f"expected a list of secrets or a map inbox_id -> secret, got "
                             f"{_describe(raw)}")  # fmt: skip


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
    extra["sinks"] = sinks

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
        return loader.fail(f"{path}.type", f"unknown sink type {kind!r} (known: "
                                           f"{', '.join(registry)})")  # fmt: skip
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
    if not 1 <= om.websocket.max_in_flight <= protocol.REPLAY_LIMIT:
        limit = protocol.REPLAY_LIMIT
        message = f"must be between 1 and {limit} (OpenMail replays at most that many)"
        return loader.fail("openmail.websocket.max_in_flight", message)
    if om.websocket.enabled and om.api_key is None:
        return loader.fail(
            "openmail.api_key", "is required while openmail.websocket.enabled is true"
        )
    if not om.websocket.enabled and not om.webhook.enabled:
        return loader.fail("openmail", "both websocket and webhook are disabled: nothing would "
                                       "receive events")  # fmt: skip
    return om


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
            extra["inbox_secrets"] = parsed["__map__"]
        elif isinstance(parsed, tuple):
            extra["secrets"] = parsed
        else:
            secrets_ok = False
    webhook = loader.section("openmail.webhook", raw, WebhookConfig, extra=extra)
    if not isinstance(webhook, WebhookConfig) or not secrets_ok:
        return _INVALID
    if webhook.enabled and not webhook.account_secrets and not webhook.inbox_secrets:
        return loader.fail("openmail.webhook.secret", "is required while openmail.webhook.enabled "
                                                      "is true (or give secrets:)")  # fmt: skip
    if not webhook.path.startswith("/"):
        return loader.fail("openmail.webhook.path", f"must start with '/', got {webhook.path!r}")
    return webhook


# --- Presentation ------------------------------------------------------------------------------


def describe(value: object) -> object:
    """A JSON-able view of a config with every secret masked, for ``check`` and ``/status``."""
    if isinstance(value, Secret):
        return "***"
    if isinstance(value, Listen | Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, object] = {}
        for f in dataclasses.fields(value):
            if f.metadata.get("internal"):
                continue
            out[f.metadata.get("key", f.name)] = describe(getattr(value, f.name))
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
