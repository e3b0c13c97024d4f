"""The configuration schema: one frozen dataclass per section, defaults included.

Sink types add their own option dataclasses next to their classes (``bridge.sinks``); the loader
learns them from the registry it is given (:class:`SinkOptionsSource`).
"""

from __future__ import annotations

import re
import resource
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final, Generic, Literal, Protocol, TypeVar

from bridge import protocol
from bridge.config.nats import NatsConfig
from bridge.config.values import (
    Bounds,
    ByteSize,
    Duration,
    EmailAddress,
    FilePath,
    HttpUrl,
    Listen,
    Positive,
    Rate,
    Secret,
    WsUrl,
)
from bridge.runtime import EventLoopChoice

DEFAULT_MAX_CONNECTIONS = 256

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
    max_in_flight: Annotated[
        int, Bounds(1, protocol.REPLAY_LIMIT, "OpenMail replays at most that many")
    ] = 100
    """Events read from the socket but not yet committed: reading stops at this many until commits
    make room. Bounds memory, and stays within the replay limit so a reconnect after a failed
    commit replays every one of them. Half of it makes a batch, so one commits while the next
    fills."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsConfig:
    cert: FilePath
    key: FilePath


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookConfig:
    enabled: bool = True
    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", 8080))
    path: str = "/webhooks"
    secret: Secret | None = None
    secrets: tuple[Secret, ...] = ()
    """Extra account-level secrets, any of which verifies any event (rotation)."""
    inbox_secrets: Mapping[str, Secret] = field(default_factory=dict)
    """``secrets:`` given as a map: an inbox's event verifies only with its own secret."""
    tolerance: Duration = protocol.WEBHOOK_TOLERANCE
    max_body: ByteSize = 10 << 20
    tls: TlsConfig | None = None
    # The listener faces the internet: every connection and buffer is bounded before any
    # signature is known.
    header_timeout: Duration = 10.0
    """From the first byte of a request (or the connection's opening) to its last header line."""
    body_timeout: Duration = 30.0
    """To read a request's whole body once its headers are in."""
    keepalive_timeout: Duration = 15.0
    """An idle keep-alive connection is closed after this long."""
    max_connections: Positive | None = None
    """Open connections at once; a new one beyond is closed at once. Default
    ``min(256, RLIMIT_NOFILE / 4)``, so the admin server and the spool keep descriptors."""
    max_buffered_bytes: ByteSize | None = None
    """Request-body bytes held in memory at once, over all connections; over it a request is
    answered 503 before its body is read. Default ``4 * max_body``."""
    offload_above: ByteSize = 64 << 10
    """Bodies larger than this are verified (and their claimed inbox parsed) on a worker thread,
    so a large body never blocks the event loop."""

    @property
    def account_secrets(self) -> tuple[Secret, ...]:
        return ((self.secret,) if self.secret else ()) + self.secrets

    @property
    def connection_limit(self) -> int:
        if self.max_connections is not None:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return DEFAULT_MAX_CONNECTIONS
        return max(1, min(DEFAULT_MAX_CONNECTIONS, soft // 4))

    @property
    def buffer_limit(self) -> int:
        if self.max_buffered_bytes is not None:
            return self.max_buffered_bytes
        return 4 * self.max_body


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenMailConfig:
    api_key: Secret | None = None
    api_url: HttpUrl | None = None
    """The OpenMail REST API, the one origin attachments are fetched from (with the API key).
    Default: ``websocket.url``'s scheme, host and port, ``wss`` -> ``https``, ``ws`` -> ``http``."""
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    webhook: WebhookConfig = field(default_factory=WebhookConfig)

    def __post_init__(self) -> None:
        if self.api_url is not None and "@" in urllib.parse.urlsplit(self.api_url).netloc:
            raise ValueError("api_url: must not carry user-info (user:password@)")

    @property
    def api_base(self) -> str:
        """``api_url``, or the origin derived from ``websocket.url`` (its path dropped)."""
        if self.api_url is not None:
            return self.api_url
        parts = urllib.parse.urlsplit(self.websocket.url)  # the loader checked it is ws(s)
        scheme = "https" if parts.scheme == "wss" else "http"
        return f"{scheme}://{parts.netloc.rpartition('@')[2]}"


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    path: FilePath = Path("state/bridge.db")
    max_bytes: ByteSize = 1 << 30
    min_free: ByteSize = 256 << 20
    dedup_window: Duration = 7 * 86400.0
    history: int = 1000
    """Delivered events kept, payloads included, for ``events`` and the console; 0 = none.
    Bounded by count: their bytes do not count toward ``max_bytes``."""


HOST_VALUE: Final = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
"""What a browser sends as ``Host``: a name or IP address (IPv6 in brackets), an optional port."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    enabled: bool = True
    listen: Listen = field(default_factory=lambda: Listen("127.0.0.1", 9464))
    token: Secret | None = None
    show_content: bool = False
    """Whether the console shows each email's sender and subject; off, it shows ids only."""
    allowed_hosts: tuple[str, ...] = ()
    """``Host`` header values the admin server answers besides its listen address (a reverse
    proxy's name, an SSH tunnel's ``localhost:PORT``); anything else gets 403 on private paths."""

    def __post_init__(self) -> None:
        for host in self.allowed_hosts:
            if not HOST_VALUE.fullmatch(host):
                raise ValueError(
                    f"allowed_hosts: {host!r} is not a Host header value: a name or IP "
                    "address and an optional :port, e.g. console.example.com or localhost:8000"
                )


LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["json", "console", "auto"]


MIN_STATS_INTERVAL: Final = 1.0
"""A shorter interval would turn the summary line back into a line per event."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: LogLevel = "info"
    format: LogFormat = "auto"
    stats_interval: Duration = 60.0
    """How often the ``stats`` line sums up what was received and delivered; 0 = never."""

    def __post_init__(self) -> None:
        if 0 < self.stats_interval < MIN_STATS_INTERVAL:
            raise ValueError(
                f"stats_interval: must be 0s (off) or at least {MIN_STATS_INTERVAL:g}s, "
                f"got {self.stats_interval:g}s"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    initial: Duration = 1.0
    max: Duration = 300.0
    max_age: Duration = 86400.0
    max_attempts: int = 0
    """0 = no cap on attempts (``max_age`` still applies)."""


Ordering = Literal["thread", "none", "strict"]

OptionsT_co = TypeVar("OptionsT_co", covariant=True)
"""A sink type's options dataclass; covariant because a ``SinkConfig`` never changes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SinkConfig(Generic[OptionsT_co]):
    """Options every sink has, plus ``options``: the dataclass its ``type`` declares.

    The loader knows a sink's options only as ``object`` (``SinkConfig[object]``); a sink class
    takes ``SinkConfig[ItsOptions]``, and the registry (``bridge.sinks``) checks the match once.
    """

    name: str
    type: str
    options: OptionsT_co
    ordering: Ordering = "thread"
    concurrency: Positive = 4
    retry: RetryConfig = field(default_factory=RetryConfig)
    debounce: Duration = 0.0
    """0 = off. Else a thread's events wait for a window opened by its first pending event and
    closed this long after, then go together (one request for an HTTP sink with
    ``format: batch``)."""


class SinkOptionsSource(Protocol):
    """What the loader needs of one sink type in the registry it is given: the options dataclass
    that the keys of a sink of that ``type:`` (other than the common ones) fill."""

    @property
    def options(self) -> type: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """Every given key must hold; an empty list or an unset value is a key not given.

    The classification and content keys read the event's ``message``; a field that is absent
    or not of its type holds for no value, so only ``not:`` lets such an event through.
    """

    inbox_ids: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    senders: tuple[str, ...] = field(default=(), metadata={"key": "from"})
    recipients: tuple[str, ...] = field(default=(), metadata={"key": "to"})
    verdict: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    auto_replyable: bool | None = None
    has_attachments: bool | None = None
    subject: tuple[str, ...] = ()
    """Globs on the whole subject, case-insensitive."""
    not_: RouteMatch | None = field(default=None, metadata={"key": "not"})
    """Holds exactly when this match does not."""

    @property
    def empty(self) -> bool:
        """No key given: holds for every event."""
        return self == _ANY_MATCH

    def __post_init__(self) -> None:
        if self.not_ is not None and self.not_.empty:
            raise ValueError(
                "not: is empty: an empty match holds for every event, so this route would "
                "match none (give the keys to exclude, or leave out not:)"
            )


_ANY_MATCH: Final = RouteMatch()


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardConfig:
    """The loop and auto-reply guard of a route's HTTP sinks (the agents that may answer)."""

    own_addresses: tuple[EmailAddress, ...] = ()
    """The account's own addresses, besides every ``to`` address seen on its inboxes."""
    quarantine: str | None = None
    """The sink guarded mail goes to instead; None: it is dropped (and recorded)."""
    auto_replyable: Literal["block", "deliver"] = "block"
    """``deliver``: mail marked ``auto_replyable: false`` still goes to the agents, with the
    header ``X-OpenMail-Bridge-No-Reply: true``."""


OverLimit = Literal["hold", "quarantine", "drop"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsConfig:
    per_sender: Rate | None = None
    per_thread: Rate | None = None
    over: OverLimit = "hold"
    """``hold``: delivered once the window admits it; ``quarantine``: to the guard's quarantine
    sink; ``drop``: recorded, not delivered."""
    max_keys: Annotated[int, Bounds(1)] = 100_000
    """Senders and threads tracked at once; the longest idle are forgotten first."""

    @property
    def active(self) -> bool:
        return self.per_sender is not None or self.per_thread is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    name: str
    sinks: tuple[str, ...]
    match: RouteMatch = field(default_factory=RouteMatch)
    guard: GuardConfig | bool = True
    """``true``: the default guard; ``false``: none."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def guard_config(self) -> GuardConfig | None:
        if self.guard is False:
            return None
        return GuardConfig() if self.guard is True else self.guard


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    openmail: OpenMailConfig = field(default_factory=OpenMailConfig)
    state: StateConfig = field(default_factory=StateConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sinks: Mapping[str, SinkConfig[object]] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    shutdown_timeout: Duration = 10.0
    event_loop: EventLoopChoice = "auto"
    """``auto``: uvloop when installed (the default on Linux), else asyncio's own loop."""
    nats: NatsConfig | None = None
    """The JetStream connection, stream and consumer; None when the bridge does not use NATS."""
    source: Path | None = field(default=None, metadata={"internal": True})
    """The file this config was read from."""
