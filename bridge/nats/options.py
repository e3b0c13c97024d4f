"""Connect options for ``nats-py`` built from the ``nats:`` section: servers, the one way to
authenticate, TLS, reconnect timing. Credentials go to the client and nowhere else."""

from __future__ import annotations

import ssl
from typing import TypedDict

from bridge.config import NatsConfig


class ConnectOptions(TypedDict, total=False):
    """The keyword arguments of ``nats.aio.client.Client.connect`` this bridge sets."""

    servers: list[str]
    name: str
    connect_timeout: int
    reconnect_time_wait: int
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
        # nats-py annotates these two as int but waits with them as seconds, fractions included.
        connect_timeout=config.connect_timeout,  # type: ignore[typeddict-item]
        reconnect_time_wait=config.reconnect_wait,  # type: ignore[typeddict-item]
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
