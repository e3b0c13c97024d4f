"""What a new configuration changes in a running bridge, and what of it waits for a restart.

Pure: configurations in, values out. The supervisor applies the result (SIGHUP) and logs it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from bridge.config import Config, SinkConfig


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The sections that differ between ``old`` and ``new`` but apply only after a restart:
    the store, the admin server, the webhook's socket, which sources run and the NATS
    connection, stream and consumer."""
    hook_old, hook_new = old.openmail.webhook, new.openmail.webhook
    changed = {
        "state": old.state != new.state,
        "admin": old.admin != new.admin,
        "openmail.webhook.enabled/listen/path/tls": (
            (hook_old.enabled, hook_old.listen, hook_old.path, hook_old.tls)
            != (hook_new.enabled, hook_new.listen, hook_new.path, hook_new.tls)
        ),
        "openmail.websocket.enabled": (
            old.openmail.websocket.enabled != new.openmail.websocket.enabled
        ),
        "nats": old.nats != new.nats,
    }
    return [section for section, differs in changed.items() if differs]


def applicable_part(old: Config, new: Config) -> Config:
    """``new`` with the parts that only a restart can change kept as they run now (``old``)."""
    hook_old = old.openmail.webhook
    webhook = dataclasses.replace(
        new.openmail.webhook,
        enabled=hook_old.enabled,
        listen=hook_old.listen,
        path=hook_old.path,
        tls=hook_old.tls,
    )
    websocket = dataclasses.replace(new.openmail.websocket, enabled=old.openmail.websocket.enabled)
    openmail = dataclasses.replace(new.openmail, webhook=webhook, websocket=websocket)
    return dataclasses.replace(
        new, state=old.state, admin=old.admin, openmail=openmail, nats=old.nats
    )


def sinks_to_replace(
    running: Mapping[str, SinkConfig[object]], wanted: Mapping[str, SinkConfig[object]]
) -> list[str]:
    """Running sinks whose configuration ``wanted`` changes or drops: their workers stop."""
    return [name for name, config in running.items() if wanted.get(name) != config]
