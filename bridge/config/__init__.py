"""Configuration: YAML parsed once into frozen, typed objects, every problem named by its key path.

A section is declared once, as a frozen dataclass (``schema``), and validated by its annotations
(``values``: ``Duration``, ``ByteSize``, ``Secret``, ``FilePath``, ``HttpUrl``, ``WsUrl``,
``Listen``, ``Literal`` choices, tuples, maps, nested sections) by one loader (``loader``) that
reports every problem at once as ``key.path: message``. Sink types bring their own option
dataclasses (``bridge.sinks.SINK_TYPES``).
"""

from bridge.config.loader import build_config, describe, load_config
from bridge.config.schema import (
    AdminConfig,
    Config,
    LogConfig,
    OpenMailConfig,
    ReconnectConfig,
    RetryConfig,
    RouteConfig,
    RouteMatch,
    SinkConfig,
    StateConfig,
    TlsConfig,
    WebhookConfig,
    WebSocketConfig,
)
from bridge.config.values import (
    ByteSize,
    Duration,
    FilePath,
    HttpUrl,
    Listen,
    Secret,
    WsUrl,
    parse_duration,
    parse_listen,
    parse_size,
)

__all__ = [
    "AdminConfig",
    "ByteSize",
    "Config",
    "Duration",
    "FilePath",
    "HttpUrl",
    "Listen",
    "LogConfig",
    "OpenMailConfig",
    "ReconnectConfig",
    "RetryConfig",
    "RouteConfig",
    "RouteMatch",
    "Secret",
    "SinkConfig",
    "StateConfig",
    "TlsConfig",
    "WebSocketConfig",
    "WebhookConfig",
    "WsUrl",
    "build_config",
    "describe",
    "load_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
]
