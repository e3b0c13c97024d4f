"""Configuration: YAML parsed once into frozen, typed objects, every problem named by its key path.

``yaml_file`` reads the file (a key given twice in one mapping is a problem). A section is
declared once, as a frozen dataclass (``schema``), and validated by its annotations (``values``:
``Duration``, ``ByteSize``, ``Secret``, ``FilePath``, ``HttpUrl``, ``WsUrl``, ``Listen``,
``Literal`` choices, tuples, maps, nested sections) by one walker (``walker``) that reports
every problem at once as ``key.path: message``; ``loader`` adds the rules that span
sections (``directories`` judges a file sink's directory, ``files`` the state database's path
and the files the sinks write); ``lenient`` reads only the keys the operator commands need.
``presentation`` shows a loaded config with its secrets masked and lists its warnings.

Sink types bring their own option dataclasses: the caller passes the registry
(``load_config(path, sink_types=bridge.sinks.SINK_TYPES)``), so this package never imports the
sinks, and the sinks import only ``schema`` and ``values``.
"""

from bridge.config.lenient import ADMIN, ROUTES, STATE, OperatorConfig, read_operator_config
from bridge.config.loader import build_config, load_config
from bridge.config.nats import (
    NatsConfig,
    NatsConsumeConfig,
    NatsPublishing,
    NatsStreamConfig,
    NatsTlsConfig,
)
from bridge.config.presentation import ConfigWarning, config_warnings, describe
from bridge.config.schema import (
    AdminConfig,
    Config,
    GuardConfig,
    LimitsConfig,
    LogConfig,
    OpenMailConfig,
    ReconnectConfig,
    RetryConfig,
    RouteConfig,
    RouteMatch,
    SinkConfig,
    SinkOptionsSource,
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
    RateLimit,
    Secret,
    WsUrl,
    parse_duration,
    parse_listen,
    parse_size,
)

__all__ = [
    "ADMIN",
    "ROUTES",
    "STATE",
    "AdminConfig",
    "ByteSize",
    "Config",
    "ConfigWarning",
    "Duration",
    "FilePath",
    "GuardConfig",
    "HttpUrl",
    "LimitsConfig",
    "Listen",
    "LogConfig",
    "NatsConfig",
    "NatsConsumeConfig",
    "NatsPublishing",
    "NatsStreamConfig",
    "NatsTlsConfig",
    "OpenMailConfig",
    "OperatorConfig",
    "RateLimit",
    "ReconnectConfig",
    "RetryConfig",
    "RouteConfig",
    "RouteMatch",
    "Secret",
    "SinkConfig",
    "SinkOptionsSource",
    "StateConfig",
    "TlsConfig",
    "WebSocketConfig",
    "WebhookConfig",
    "WsUrl",
    "build_config",
    "config_warnings",
    "describe",
    "load_config",
    "parse_duration",
    "parse_listen",
    "parse_size",
    "read_operator_config",
]
