"""What a new configuration changes in a running bridge, and what of it waits for a restart.

Pure: configurations in, values out. The supervisor applies the result (SIGHUP). The two log
helpers at the end write what it logs of a configuration (at start, and after a reload); they
live here, beside what they report, to keep ``bridge.supervisor`` within 500 lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import structlog

from bridge.config import Config, NatsPublishing, SinkConfig, config_warnings
from bridge.config.nats import publish_problems
from bridge.errors import ConfigError

log = structlog.get_logger("bridge.reload")

_SOCKET_KEYS = (
    "enabled",
    "listen",
    "path",
    "tls",
    "max_connections",
    "header_timeout",
    "keepalive_timeout",
)
"""The webhook keys the listening socket is set up with: a restart applies them."""


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The sections that differ between ``old`` and ``new`` but apply only after a restart:
    the store, the admin server, the webhook's socket, which sources run, the NATS
    connection, stream and consumer, the log level and format, and the event loop."""
    hook_old, hook_new = old.openmail.webhook, new.openmail.webhook
    changed = {
        "state": old.state != new.state,
        "admin": old.admin != new.admin,
        "openmail.webhook." + "/".join(_SOCKET_KEYS): (
            [getattr(hook_old, key) for key in _SOCKET_KEYS]
            != [getattr(hook_new, key) for key in _SOCKET_KEYS]
        ),
        "openmail.websocket.enabled": (
            old.openmail.websocket.enabled != new.openmail.websocket.enabled
        ),
        "nats": old.nats != new.nats,
        "log.level/format": (old.log.level, old.log.format) != (new.log.level, new.log.format),
        "event_loop": old.event_loop != new.event_loop,
    }
    return [section for section, differs in changed.items() if differs]


def applicable_part(old: Config, new: Config) -> Config:
    """``new`` with the parts that only a restart can change kept as they run now (``old``)."""
    hook_old = old.openmail.webhook
    webhook = dataclasses.replace(
        new.openmail.webhook, **{key: getattr(hook_old, key) for key in _SOCKET_KEYS}
    )
    websocket = dataclasses.replace(new.openmail.websocket, enabled=old.openmail.websocket.enabled)
    openmail = dataclasses.replace(new.openmail, webhook=webhook, websocket=websocket)
    log = dataclasses.replace(new.log, level=old.log.level, format=old.log.format)
    return dataclasses.replace(
        new,
        state=old.state,
        admin=old.admin,
        openmail=openmail,
        nats=old.nats,
        log=log,
        event_loop=old.event_loop,
    )


def sinks_to_replace(
    running: Mapping[str, SinkConfig[object]], wanted: Mapping[str, SinkConfig[object]]
) -> list[str]:
    """Running sinks whose configuration ``wanted`` changes or drops: their workers stop."""
    return [name for name, config in running.items() if wanted.get(name) != config]


def usable_with(old: Config, new: Config) -> Config:
    """``new``, once it is known to work with what a reload keeps of ``old``.

    A reload keeps ``old.nats`` (a restart applies its changes), so a NATS sink of ``new`` must be
    served by that section, not only by the new one it was loaded against.

    Raises:
        ConfigError: a NATS sink the running connection and stream cannot serve.
    """
    if new.nats == old.nats:
        return new
    problems = [
        f"{key}: {message} (the running nats: section; a change to it applies after a restart)"
        for name, sink in new.sinks.items()
        if isinstance(sink.options, NatsPublishing)
        for key, message in publish_problems(old.nats, name, sink.options)
    ]
    if problems:
        raise ConfigError(problems)
    return new


def log_restart_needed(sections: Iterable[str]) -> None:
    """Log each section of :func:`restart_only_changes` as ``config.restart_needed``."""
    for section in sections:
        log.warning(
            "config.restart_needed",
            section=section,
            hint="this part of the new config applies after a restart",
        )


def log_warnings(config: Config) -> None:
    """What ``check`` prints as warnings, logged (at start, and after each applied reload)."""
    for warning in config_warnings(config):
        log.warning(warning.event, setting=warning.key, hint=warning.message)
