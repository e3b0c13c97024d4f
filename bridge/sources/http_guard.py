"""Bounds on the webhook listener and the admin server below aiohttp: connections at once, time to
send headers, and request-body bytes held in memory.

aiohttp's server has no header-read timeout and no connection cap of its own, so a client that
opens sockets and sends half a request line could hold descriptors until the process runs out.
:class:`GuardedSite` wraps aiohttp's protocol factory: a connection beyond ``limit`` is closed the
moment it is accepted (the other server keeps its descriptors), and one whose request headers are
not complete within ``header_timeout`` of its first byte (or of its opening) is cut. The
middleware of :meth:`GuardedSite.tracking` tells each connection when a request's headers are in,
so the timer never runs while a handler does (a long response, a stream) or between kept-alive
requests. :class:`ClientErrorLog` turns aiohttp's log of requests it cannot parse into a count
and a line a minute.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware

from bridge.printable import printable
from bridge.throttle import Throttle

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ByteBudget:
    """Bytes of request bodies held at once. Never waits: a request that does not fit is refused,
    so memory stays bounded whatever the number of connections."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def try_take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


class ClientErrorLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log (the ``logger`` of its request handler) for a server strangers reach.

    aiohttp logs each request it cannot parse (a negative or doubled ``Content-Length``, a header
    line too long, bytes after ``Connection: close``) at error level with a traceback and the
    client's bytes: a line of the client's choosing per attempt, and not counted. Such a request
    is the client's fault, answered 400 and its connection closed by aiohttp: here it is counted
    (``on_drop("bad_request")``) and logged as ``{server}.bad_request`` at most once a minute.
    Anything else aiohttp logs (a handler's bug) goes to its own logger as before, traceback and
    all.
    """

    def __init__(self, server: str, on_drop: Callable[[str], None]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._server = server
        self._on_drop = on_drop
        self._throttle = Throttle()

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        self._on_drop("bad_request")
        if (extra := self._throttle.admit_fields("rejected_since_last_line")) is not None:
            # aiohttp's level: a first request that is not HTTP at all (TLS to a plain port, a
            # scanner) it deems the internet's usual noise, and logs at debug.
            emit = log.warning if level >= logging.WARNING else log.debug
            emit(
                f"{self._server}.bad_request",
                # aiohttp's words, which quote the client's bytes: escaped, and cut short.
                # Its first line only: the next ones quote the offending header, token and all.
                detail=printable(str(error.message).split("\n", 1)[0])[:200],
                peer=_peer(args),
                **extra,
            )


def _peer(args: tuple[Any, ...]) -> str | None:
    """The client's address in aiohttp's "Error handling request from %s" arguments."""
    peer = args[0] if args and not isinstance(args[0], Mapping) else None
    return peer if isinstance(peer, str) else None


class Phase(enum.Enum):
    HEADERS = "headers"  # waiting for a request's headers: the header timer runs
    BUSY = "busy"  # a handler runs; the body timeout is the handler's
    IDLE = "idle"  # between requests: aiohttp's keep-alive timeout applies


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's per-connection protocol, with a cap on admission and a header timer around it."""

    __slots__ = ("_guard", "_inner", "_phase", "_timer", "_transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase = Phase.HEADERS

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A stream server's transport, TLS or not. Not an isinstance check: uvloop's transports
        # have the methods without subclassing asyncio.Transport.
        transport = cast(asyncio.Transport, base)
        if not self._guard.admit(transport, self):
            transport.abort()  # closed before aiohttp ever sees it; connection_lost is ours alone
            return
        self._transport = transport
        self._arm()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._guard.received(len(data))
        if self._phase is Phase.IDLE:  # the first byte of the next request on a kept connection
            self._phase = Phase.HEADERS
            self._arm()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # refused at admission
        self._disarm()
        self._guard.release(self._transport)
        self._inner.connection_lost(exc)

    def request_started(self) -> None:
        self._phase = Phase.BUSY
        self._disarm()

    def request_finished(self) -> None:
        self._phase = Phase.IDLE

    def _arm(self) -> None:
        self._disarm()
        self._timer = self._guard.loop.call_later(self._guard.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._phase is Phase.HEADERS and self._transport is not None:
            self._guard.dropped("header_timeout")
            self._transport.abort()


class ConnectionGuard:
    """The protocol factory handed to ``loop.create_server``: admission and header timers."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        limit: int,
        header_timeout: float,
        on_drop: Callable[[str], None],
        received: Callable[[int], None] = lambda size: None,
        server: str,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.server = server
        """Which server this guards (``webhook``, ``admin``): its log lines are named after it."""
        self.limit = limit
        self.header_timeout = header_timeout
        self.received = received
        """Called with the size of everything a connection receives."""
        self._factory = factory
        self._on_drop = on_drop
        self._open: dict[asyncio.Transport, _GuardedProtocol] = {}
        self._throttles: dict[str, Throttle] = {}

    def __call__(self) -> asyncio.Protocol:
        return _GuardedProtocol(self, self._factory())

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, transport: asyncio.Transport, protocol: _GuardedProtocol) -> bool:
        if len(self._open) >= self.limit:
            self.dropped("max_connections")
            return False
        self._open[transport] = protocol
        return True

    def release(self, transport: asyncio.Transport) -> None:
        self._open.pop(transport, None)

    def connection_of(self, transport: asyncio.Transport | None) -> _GuardedProtocol | None:
        return None if transport is None else self._open.get(transport)

    def dropped(self, reason: str) -> None:
        self._on_drop(reason)
        throttle = self._throttles.setdefault(reason, Throttle())
        if (suppressed := throttle.admit()) is not None:
            log.warning(
                f"{self.server}.connection_dropped",
                reason=reason,
                open_connections=len(self._open),
                max_connections=self.limit,
                header_timeout=self.header_timeout,
                dropped_since_last_line=suppressed,
            )


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's ``TCPSite``, serving through a :class:`ConnectionGuard`."""

    __slots__ = ("_guard_args", "_host", "_port", "_received", "guard")

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        limit: int,
        header_timeout: float,
        on_drop: Callable[[str], None],
        received: Callable[[int], None] = lambda size: None,
        server: str,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self._guard_args = (limit, header_timeout, on_drop, server)
        self._received = received
        self.guard: ConnectionGuard | None = None

    @staticmethod
    def tracking(site: Callable[[], GuardedSite | None]) -> Middleware:
        """The middleware an application served by a GuardedSite must have: the headers are in,
        so the connection's header timer stops until its next request. ``site`` gives the site
        once it exists (the application is built before it)."""

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            served = site()
            guard = served.guard if served is not None else None
            connection = guard.connection_of(request.transport) if guard is not None else None
            if connection is not None:
                connection.request_started()
            try:
                return await handler(request)
            finally:
                if connection is not None:
                    connection.request_finished()

        return track

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner is set up before any site starts
        limit, header_timeout, on_drop, name = self._guard_args
        self.guard = ConnectionGuard(
            server,
            limit=limit,
            header_timeout=header_timeout,
            on_drop=on_drop,
            received=self._received,
            server=name,
        )
        self._server = await asyncio.get_running_loop().create_server(
            self.guard,
            self._host,
            self._port,
            ssl=self._ssl_context,
            # asyncio accepts up to ``backlog`` sockets in one burst before any protocol runs:
            # a backlog above the cap would hold that many descriptors before the guard can
            # close the extras.
            backlog=min(self._backlog, limit),
            reuse_address=True,
        )

    @property
    def port(self) -> int:
        sockets = getattr(self._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else self._port
