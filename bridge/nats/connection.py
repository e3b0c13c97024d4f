"""One client connection to NATS, shared by the NATS sink and the NATS source: connected in the
background and retried forever (a server down at start does not stop the bridge), reconnected
across the configured servers, its state readable by readiness and ``/status``.

State changes are logged once each (``nats.connected``, ``nats.disconnected``,
``nats.auth_failed``); failed attempts after that only at debug, counted in the metrics. Only
the client's disconnected, closed and reconnected callbacks end or restore a connection: an
error the server reports on a connection it keeps open (a denied publish, a slow consumer) is
recorded and logged (``nats.error``, throttled), never taken for an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import Final

import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from bridge import redact
from bridge.config import NatsConfig
from bridge.metrics import Metrics
from bridge.nats.denials import Denials
from bridge.nats.options import TlsEnforcingClient, connect_options
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.nats")

OnConnect = Callable[[JetStreamContext], Awaitable[None]]
"""Run after every (re)connection, before the connection counts as usable (stream checks)."""
AUTH_HINT: Final = "check nats.token / user+password / creds_file / nkey_seed_file"
ERROR_LOG_INTERVAL: Final = 60.0
CANCEL_TRIES: Final = 5
CLOSE_TIMEOUT: Final = 5.0
"""How long ending the connect loop, and then closing its client, may each take: nats-py's
``close`` never returns for a client stopped in the middle of a connect or a TLS handshake, and a
stop must not hang on it."""
"""At most one ``nats.error`` line per this many seconds: each denied publish reports one."""


class ConnectionState(StrEnum):
    """Where the connection is; ``/readyz`` shows it as ``nats: <state>``."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    AUTH_FAILED = "auth_failed"
    CLOSED = "closed"


def is_transport_error(exc: BaseException) -> bool:
    """Whether nats-py reports the connection itself failing: it then reconnects (the
    disconnected callback follows) or closes (the closed callback follows)."""
    return isinstance(exc, nats.errors.UnexpectedEOF | nats.errors.StaleConnectionError | OSError)


def is_auth_error(exc: BaseException) -> bool:
    """Whether the server refused our credentials (as opposed to being unreachable)."""
    if isinstance(exc, nats.errors.AuthorizationError | nats.errors.InvalidUserCredentialsError):
        return True
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text


class NatsConnection:
    """The bridge's NATS connection.

    Args:
        config: the ``nats:`` section.
        metrics: where connection state and reconnects are counted.
        retry_wait: seconds between connection attempts after the client gave up (a refused
            credential closes it); default ``nats.reconnect_wait``.
    """

    def __init__(
        self, config: NatsConfig, metrics: Metrics, *, retry_wait: float | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.state = ConnectionState.CONNECTING
        self.reconnects = 0
        self.connections = 0
        """How many times the connection became usable: a failure seen at one count is worth
        retrying once the count has moved on (:meth:`connected_after`)."""
        self.server: str | None = None
        """The connected server's URL, user-info masked."""
        self.last_error: str | None = None
        self.connected_since: float | None = None
        self.denials = Denials()
        """Wakes who waits on a subject the server denies a publish to."""
        self._retry_wait = config.reconnect_wait if retry_wait is None else retry_wait
        self._client: Client | None = None
        self._on_connect: list[OnConnect] = []
        self._ready = asyncio.Event()
        self._next_connection = asyncio.Event()  # set and replaced each time it becomes usable
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._was_connected = False
        self._drops = 0
        """How many times the connection went away: one that did while the on-connect hooks ran
        did not become usable."""
        self._down_reason: str | None = None
        self._error_log = Throttle(ERROR_LOG_INTERVAL)
        self._secrets = redact.literal_secrets(credentials(config))

    # --- lifecycle -------------------------------------------------------------------------

    def on_connect(self, hook: OnConnect) -> None:
        """Run ``hook`` after every connection and reconnection."""
        self._on_connect.append(hook)

    async def start(self) -> None:
        """Begin connecting in the background; returns at once."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nats:connection")

    async def stop(self) -> None:
        """Close the connection (pending publishes flushed if possible). Idempotent."""
        self._stopping = True
        self._ready.clear()
        if self._task is not None:
            task, self._task = self._task, None
            # nats-py's connect can take a cancellation for a timeout (asyncio.wait_for) and try
            # again: cancel until it ends, a stop's worth of time at most.
            for _ in range(CANCEL_TRIES):
                task.cancel()
                done, _pending = await asyncio.wait({task}, timeout=CLOSE_TIMEOUT / CANCEL_TRIES)
                if done:
                    break
        if self._client is not None:
            client, self._client = self._client, None
            await _close(client)
        self._set(ConnectionState.CLOSED)

    # --- what users of the connection read -------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    @property
    def max_payload(self) -> int | None:
        """The largest message (headers and payload) the connected server takes, as its INFO
        announced; None while not connected."""
        client = self._client
        return client.max_payload if client is not None and client.is_connected else None

    def jetstream(self) -> JetStreamContext | None:
        """The JetStream context while connected, else None."""
        client = self._client
        if client is None or not self._ready.is_set() or not client.is_connected:
            return None
        return client.jetstream()

    async def wait_connected(self) -> JetStreamContext:
        """Until the connection is usable; its JetStream context."""
        while True:
            await self._ready.wait()
            if (js := self.jetstream()) is not None:
                return js
            self._ready.clear()

    async def connected_after(self, count: int) -> None:
        """Until the connection has become usable since :attr:`connections` was ``count``: at
        once if it has. A delivery that failed while NATS was down waits on this as well as on
        its backoff, so the spool drains when NATS is back, not a backoff later."""
        while self.connections <= count:
            await self._next_connection.wait()

    def describe_failure(self) -> str:
        """Why the connection is not usable, for a retryable delivery error or a log line."""
        where = self._where()
        if self.state is ConnectionState.AUTH_FAILED:
            return f"NATS server {where} refused the credentials ({AUTH_HINT})"
        reason = f": {self.last_error}" if self.last_error else ""
        return f"NATS is {self.state.value} ({where}){reason}"

    def status(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "server": self.server,
            "servers": [redact.mask_url(s) for s in self.config.servers],
            "connected_since": self.connected_since,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }

    # --- the connect loop ------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            client = TlsEnforcingClient()
            self._client = client
            self._closed.clear()
            try:
                await client.connect(
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                    **connect_options(self.config),
                )
            except Exception as exc:  # e.g. an unreadable creds file; retried like an outage
                await self._on_error(exc)
                await _close(client)
                await asyncio.sleep(self._retry_wait)
                continue
            await self._on_reconnected()
            await self._closed.wait()
            self._ready.clear()
            if not self._stopping:
                # A client closes for good on a refused credential: start over after a wait.
                if self.state is not ConnectionState.AUTH_FAILED:
                    self._set(ConnectionState.DISCONNECTED)
                await asyncio.sleep(self._retry_wait)

    async def _on_closed(self) -> None:
        self._closed.set()

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's error callback: never ends a connection (the disconnected and closed
        callbacks do), and while none is up only says why an attempt failed, which no other
        callback reports."""
        error = self._scrub(str(exc) or type(exc).__name__)
        self.last_error = error
        client = self._client
        if client is not None and client.is_connected:
            if is_transport_error(exc):
                # The disconnected or closed callback follows; it logs this as the reason.
                self._down_reason = error
                return
            # The server keeps this connection open (a permissions violation, a slow consumer):
            # it stays usable, and no callback would ever restore it if it were marked down.
            denied = self.denials.report(error)
            if (extra := self._error_log.admit_fields("errors_since_last_line")) is not None:
                hint = "the connection stays up" + (
                    "; this NATS user may not publish there" if denied else ""
                )
                log.warning("nats.error", server=self.server, error=error, hint=hint, **extra)
            return
        if self.state is ConnectionState.CONNECTED:
            # The client is already reconnecting; its disconnected callback follows.
            self._down_reason = error
        elif is_auth_error(exc):
            if self.state is not ConnectionState.AUTH_FAILED:
                log.error("nats.auth_failed", server=self._where(), error=error, hint=AUTH_HINT)
            self._set(ConnectionState.AUTH_FAILED)
        elif self.state is ConnectionState.CONNECTING:
            log.warning("nats.disconnected", server=self._where(), error=error)
            self._set(ConnectionState.DISCONNECTED)
        else:
            log.debug("nats.connect_failed", server=self._where(), error=error)

    async def _on_disconnected(self) -> None:
        if self._stopping:
            return
        self._ready.clear()
        self._drops += 1
        # CONNECTING: the first connection went away while its on-connect hooks ran.
        if self.state in (ConnectionState.CONNECTED, ConnectionState.CONNECTING):
            server = self.server or self._where()
            log.warning("nats.disconnected", server=server, error=self._down_reason)
            self._set(ConnectionState.DISCONNECTED)

    async def _on_reconnected(self) -> None:
        client = self._client
        if client is None or self._stopping:
            return
        url = client.connected_url
        self.server = redact.mask_url(url.geturl()) if url is not None else None
        if self._was_connected:
            self.reconnects += 1
            self.metrics.nats_reconnects.inc()
        self._was_connected = True
        drops = self._drops
        js = client.jetstream()
        for hook in self._on_connect:
            try:
                await hook(js)
            except Exception as exc:
                # The connection stays usable; the hook's owner reports its own failure.
                log.warning("nats.on_connect_failed", error=self._scrub(str(exc)))
        if self._drops != drops or not client.is_connected or client is not self._client:
            # It went away while the hooks ran: the disconnected callback said so, and the
            # reconnection that follows runs them again and makes the connection usable.
            return
        self.connected_since = time.time()
        self.last_error = self._down_reason = None
        log.info("nats.connected", server=self.server, reconnects=self.reconnects)
        self._set(ConnectionState.CONNECTED)
        self._ready.set()
        self.connections += 1
        self._next_connection.set()
        self._next_connection = asyncio.Event()

    def _set(self, state: ConnectionState) -> None:
        if state is not ConnectionState.CONNECTED:
            self.connected_since = None
        self.state = state
        self.metrics.nats_connected.set(1 if state is ConnectionState.CONNECTED else 0)

    def _where(self) -> str:
        client = self._client
        current = getattr(client, "_current_server", None) if client is not None else None
        uri = getattr(current, "uri", None)
        if uri is not None:
            return redact.mask_url(uri.geturl())
        return ", ".join(redact.mask_url(s) for s in self.config.servers)

    def _scrub(self, text: str) -> str:
        return redact.scrub_text(text, self._secrets)


def credentials(config: NatsConfig) -> list[str]:
    """The literal credentials of the ``nats:`` section, for the redactors: token, password,
    URL user-info, and the secret lines of the creds and nkey seed files (unreadable ones are
    the client's problem to report)."""
    values = [s.get() for s in (config.token, config.password) if s is not None]
    for server in config.servers:
        values += redact.url_secrets(server)
    for path in (config.creds_file, config.nkey_seed_file):
        if path is not None:
            with contextlib.suppress(OSError, UnicodeDecodeError):
                values += redact.credential_lines(path.read_text(encoding="utf-8"))
    return values


async def _close(client: Client) -> None:
    """Close ``client``, flushing what it can, within :data:`CLOSE_TIMEOUT`; then drop it."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await client.close()
