"""Connect options for ``nats-py`` built from the ``nats:`` section: servers, the one way to
authenticate, TLS, reconnect and keepalive timing. Credentials go to the client and nowhere
else."""

from __future__ import annotations

import ssl
from typing import Final, TypedDict

from bridge.config import NatsConfig

MAX_OUTSTANDING_PINGS: Final = 3
"""Pings left unanswered before the client drops the connection as stale and moves to the next
server: a path that went silent (a dropped NAT or firewall entry, a cut link) closes nothing, so
only the pings find it, after ``(MAX_OUTSTANDING_PINGS + 1) * ping_interval`` at most."""


class ConnectOptions(TypedDict, total=False):
    """The keyword arguments of ``nats.aio.client.Client.connect`` this bridge sets."""

    servers: list[str]
    name: str
    connect_timeout: int
    reconnect_time_wait: int
    ping_interval: int
    max_outstanding_pings: int
    max_reconnect_attempts: int
    allow_reconnect: bool
    token: str
    user: str
    password: str
    user_credentials: str
    nkeys_seed: str
    tls: ssl.SSLContext


def connect_options(config: NatsConfig) -> ConnectOptions:
    """What ``Client.connect`` is given. Reconnects never stop: an outage of any length ends
    when a server answers again.

    Raises:
        OSError: a TLS file cannot be read (``ssl.SSLError`` included).
    """
    options = ConnectOptions(
        servers=list(config.servers),
        name=config.name,
        # nats-py annotates these three as int but waits with them as seconds, fractions included.
        connect_timeout=config.connect_timeout,  # type: ignore[typeddict-item]
        reconnect_time_wait=config.reconnect_wait,  # type: ignore[typeddict-item]
        ping_interval=config.ping_interval,  # type: ignore[typeddict-item]
        max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        max_reconnect_attempts=-1,
        allow_reconnect=True,
    )
    if config.token is not None:
        options["token"] = config.token.get()
    if config.user is not None and config.password is not None:
        options["user"] = config.user
        options["password"] = config.password.get()
    if config.creds_file is not None:
        options["user_credentials"] = str(config.creds_file)
    if config.nkey_seed_file is not None:
        options["nkeys_seed"] = str(config.nkey_seed_file)
    if config.tls is not None:
        options["tls"] = tls_context(config)
    return options


def tls_context(config: NatsConfig) -> ssl.SSLContext:
    """A client context trusting ``tls.ca`` (else the system's), presenting ``tls.cert``."""
    tls = config.tls
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls and tls.ca else None
    )
    if tls is not None and tls.cert is not None and tls.key is not None:
        context.load_cert_chain(tls.cert, tls.key)
    return context
