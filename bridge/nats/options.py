"""Connect options for ``nats-py`` built from the ``nats:`` section: servers, the one way to
authenticate, TLS, reconnect and keepalive timing; and the client that takes them. Credentials
go to the client and nowhere else."""

from __future__ import annotations

import ssl
from typing import Any, Final, TypedDict

import nats.errors
from nats.aio.client import Client

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


class TlsEnforcingClient(Client):
    """nats-py's client, which refuses a server that does not require TLS when TLS was asked for
    (``nats.tls``, or a ``tls://`` URL).

    nats-py upgrades a connection to TLS only when the server's INFO says ``tls_required``, and
    otherwise goes on in plaintext, credentials and all: a server set up without TLS, or anyone
    in the path answering in its place, would be sent the token in clear. The check runs on the
    INFO of every connection, before the client writes CONNECT.
    """

    async def _process_info(self, info: dict[str, Any], initial_connection: bool = False) -> None:
        if initial_connection and not info.get("tls_required") and self._tls_wanted():
            server = self._current_server.uri.netloc if self._current_server else "the server"
            if self._transport is not None:
                # nats-py leaves a connection it failed to set up open; its close is untyped.
                self._transport.close()  # type: ignore[no-untyped-call]
            raise nats.errors.Error(
                f"nats: {server} does not require TLS, but the bridge asks for it "
                "(nats.tls or a tls:// URL): not connecting, its credentials would go in clear"
            )
        await super()._process_info(info, initial_connection)

    def _tls_wanted(self) -> bool:
        server = self._current_server
        return self.options.get("tls") is not None or (
            server is not None and server.uri.scheme == "tls"
        )
