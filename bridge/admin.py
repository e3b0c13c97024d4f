"""Admin server: ``/healthz`` (liveness), ``/readyz`` (can events get in?), ``/metrics``,
``/status``, ``/trigger`` (send a test event to one sink, then ask how its delivery went), and the
console at ``/`` with its JSON API under ``/api/`` (``bridge.console``).

Separate from the webhook listener so it can stay on loopback while the webhook faces OpenMail.
Liveness is only "the event loop turns": a full disk or a down sink must not make an orchestrator
restart a bridge that is waiting it out.

Paths are public or private. Public ones (``PUBLIC_PATHS``) are what probes and Prometheus need
and never show a payload or a credential: they answer without a token. Every other path, those
added later included, is private: with ``admin.token`` set it needs that bearer token on any
address; without one it answers only on a loopback address, and 403 elsewhere (the bridge still
starts, so a container's documented ``docker run`` keeps working; the supervisor logs
``admin.private_paths_disabled`` at start, from the config's warnings). A browser's console
session cookie stands in for the token; the login form, the page's static files and ``/`` itself
answer without one (``/`` then shows the login form).

Every private path also answers only a ``Host`` that names this server (DNS rebinding), and a
request that changes state only as a JSON POST whose ``Origin``, when a browser sends one, is the
console's own (``bridge.console.guard``). Every response carries the console's security headers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import logs
from bridge.activity import ActivityFeed
from bridge.config import AdminConfig
from bridge.console import auth, guard
from bridge.console.auth import CREDENTIAL, Credential
from bridge.console.logins import FailedLogins
from bridge.console.peer import is_own, peer_uid
from bridge.console.routes import Console
from bridge.console.sessions import Sessions
from bridge.console.view import ConsoleView
from bridge.errors import StoreError
from bridge.health import Readiness
from bridge.sources.http_guard import ClientErrorLog, GuardedSite
from bridge.stream import activity_stream, throughput
from bridge.throttle import Throttle
from bridge.trigger import Refusal, Refused, Trigger

log = structlog.get_logger("bridge.admin")

MAX_CONNECTIONS: Final = 128
"""Connections at once; one beyond is closed as it is accepted. Room for every live stream
(``bridge.stream``), the console's requests and the probes."""
HEADER_TIMEOUT: Final = 10.0
"""Seconds from a connection's opening, or a request's first byte, to its last header line."""
BODY_TIMEOUT: Final = 10.0
"""Seconds a request's body may take once its headers are in: read before any handler runs, so
that a client trickling one cannot hold a connection (and with 128 of them, the probes) for
long."""
LINGER_TIME: Final = 2.0
"""Seconds the rest of a body is read and dropped after an answer sent before it all came (a 408,
a refusal), so that the client reads the answer; then the connection closes."""
KEEPALIVE_TIMEOUT: Final = 15.0
"""Seconds an idle kept-alive connection stays open."""
PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
"""Answer without a token: what liveness/readiness probes and a Prometheus scrape need."""
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that never change state here."""
REFUSAL_STATUS: Final = {
    Refusal.UNKNOWN_SINK: 404,
    Refusal.STOPPING: 503,
    Refusal.NOT_STORED: 503,
}


class AdminView(ConsoleView, Protocol):
    """What the admin server shows of a bridge (the console's part included); the supervisor
    provides it."""

    def readiness(self) -> tuple[Readiness, Mapping[str, str]]:
        """The bridge's readiness and each part's state."""
        ...

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition, gauges brought up to date."""
        ...

    @property
    def trigger(self) -> Trigger:
        """Sends test events to one sink."""
        ...

    @property
    def activity(self) -> ActivityFeed:
        """What happens to events as it happens: ``/api/stream``, ``/api/throughput``."""
        ...


class AdminServer:
    """The admin HTTP server.

    Args:
        config: the ``admin`` section: where to listen, and the bearer token of private paths.
        view: the bridge it reports on.
        clock: monotonic seconds, for sessions and wrong-token counts; tests pass one they move.
        owner: whether a request comes from the bridge's own user or root (by default, looked up
            in the kernel's socket table); tests pass one that says no, to be a stranger.
    """

    def __init__(
        self,
        config: AdminConfig,
        view: AdminView,
        *,
        clock: Callable[[], float] = time.monotonic,
        owner: Callable[[web.Request], Awaitable[bool]] | None = None,
    ) -> None:
        self._owner = owner or _own_user
        self.config = config
        self.view = view
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.sessions = Sessions(clock=clock)
        self.logins = FailedLogins(clock=clock)
        self._refused_log = Throttle(clock=clock)
        self.console = Console(config, view, self.sessions, self.logins)
        self._hosts = guard.HostRule(config.listen, config.listen.port, config.allowed_hosts)

    async def start(self) -> None:
        site: GuardedSite | None = None
        app = web.Application(middlewares=[GuardedSite.tracking(lambda: site), self._guard])
        app.on_response_prepare.append(_security_headers)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/trigger", self._trigger)
        app.router.add_get("/trigger/{event_id}", self._trigger_outcome)
        self.console.add_routes(app)
        # The config read at each request: a reload adds and removes sinks.
        stream = activity_stream(self.view.activity, sinks=lambda: self.view.config.sinks)
        app.router.add_get("/api/stream", stream)
        app.router.add_get("/api/throughput", throughput(self.view.activity))
        # The webhook listener's bounds, smaller: a client that opens sockets and sends nothing
        # must not take the process's descriptors (the webhook and the health probes need them).
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            lingering_time=LINGER_TIME,
            # A request the HTTP parser cannot read: a line a minute (admin.bad_request).
            logger=ClientErrorLog("admin", on_drop=lambda reason: None),
        )
        await runner.setup()
        listen = self.config.listen
        # Dropped connections are logged by the guard (admin.connection_dropped), counted nowhere.
        site = GuardedSite(
            runner,
            listen.host,
            listen.port,
            ssl_context=None,
            limit=MAX_CONNECTIONS,
            header_timeout=HEADER_TIMEOUT,
            on_drop=lambda reason: None,
            server="admin",
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"admin server cannot bind {listen}: {exc.strerror}") from None
        self._runner = runner
        self.port = site.port
        self._hosts = guard.HostRule(listen, self.port, self.config.allowed_hosts)
        log.info("admin.listening", listen=f"{listen.host}:{self.port}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        host = request.headers.get("Host", "")
        if not self._hosts.allows(host):
            return _refused(
                403,
                f"this admin server does not answer for Host {host!r}",
                "open it at its listen address (localhost for a loopback one), or list the name "
                "in admin.allowed_hosts",
            )
        token = self.config.token
        if token is None and not self.config.listen.is_loopback:
            return _refused(
                403,
                "this path is disabled: the admin server listens on "
                f"{self.config.listen} without admin.token",
                "set admin.token and send it as 'Authorization: Bearer <token>', "
                "or listen on a loopback address",
            )
        # Without a token there is no login form: the console's own paths show the console
        # itself, so only its static files are left open to every local user.
        if (
            token is None
            and not request.path.startswith(auth.STATIC_PREFIX)
            and not await self._owner(request)
        ):
            return _refused(
                403,
                "this admin server has no admin.token: on loopback, only the bridge's own user "
                "and root may use this path",
                "set admin.token (send it as 'Authorization: Bearer <token>', or log in to the "
                "console), or run the command as the bridge's user or root",
            )
        if token is not None and (refused := await self._too_many_wrong_tokens(request)):
            return refused
        credential = auth.credential_of(request, token, self.sessions)
        wrong_bearer = credential is not Credential.BEARER and auth.bearer_of(request) is not None
        if token is not None and wrong_bearer:
            self.logins.failed(request.remote)
        request[CREDENTIAL] = credential
        if request.method not in SAFE_METHODS:
            refusal = guard.state_change_refusal(
                method=request.method,
                content_type=request.content_type,
                origin=request.headers.get("Origin"),
                host=host,
                from_browser=credential is Credential.SESSION or request.path in auth.BROWSER_PATHS,
                console_api=request.path.startswith(auth.API_PREFIX),
            )
            if refusal is not None:
                return _refused(403, refusal)
        if credential is Credential.NONE and not auth.is_open(request.path):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if request.can_read_body:
            try:
                async with asyncio.timeout(BODY_TIMEOUT):
                    await request.read()  # kept by aiohttp for the handler's own read
            except TimeoutError:
                response = _refused(408, f"request body not received within {BODY_TIMEOUT:g}s")
                response.force_close()  # then the rest is read for LINGER_TIME at most
                return response
        return await handler(request)

    async def _too_many_wrong_tokens(self, request: web.Request) -> web.Response | None:
        """429 for a request presenting a token (a bearer, a login) from an address that sent
        too many wrong ones: refused before the comparison, so that guessing goes no faster
        than :mod:`bridge.console.logins` allows. None when it may be compared."""
        presents = auth.bearer_of(request) is not None or request.path == auth.LOGIN_PATH
        wait = self.logins.retry_after(request.remote) if presents else None
        if wait is None:
            return None
        if await self._owner(request):
            # Whoever guesses beside it must not lock out the bridge's own user (its commands,
            # its agent), who may read the token from the config anyway.
            request[auth.LIMIT_WAIVED] = True
            return None
        if (extra := self._refused_log.admit_fields("refused_since_last_line")) is not None:
            log.warning("admin.wrong_tokens_refused", remote=request.remote, **extra)
        return auth.too_many_wrong_tokens(wait)

    async def _healthz(self, _: web.Request) -> web.Response:
        # Answering at all proves the event loop turns.
        return web.json_response({"status": "ok", "time": time.time()})

    async def _readyz(self, _: web.Request) -> web.Response:
        state, parts = self.view.readiness()
        status = 503 if state is Readiness.UNAVAILABLE else 200
        return web.json_response({"status": state, **parts}, status=status)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = await self.view.metrics_text()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, _: web.Request) -> web.Response:
        # Errors and reasons in it come from receivers and peers: masked as the logs are.
        return web.json_response(logs.REDACTOR.scrub_tree(await self.view.status()))

    async def _trigger(self, request: web.Request) -> web.Response:
        """``{"sink": NAME}`` in; 202 with the test event's id once it is durably spooled."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        sink = body.get("sink") if isinstance(body, dict) else None
        if not isinstance(sink, str) or not sink:
            return web.json_response({"error": 'expected a JSON body {"sink": NAME}'}, status=400)
        sent = await self.view.trigger.send(sink)
        if isinstance(sent, Refused):
            return web.json_response(
                logs.REDACTOR.scrub_tree(
                    {"error": sent.message, "reason": sent.reason, "sinks": list(sent.sinks)}
                ),
                status=REFUSAL_STATUS[sent.reason],
            )
        log.info("trigger.sent", event_id=sent.event_id, sink=sent.sink)
        return web.json_response({"event_id": sent.event_id, "sink": sent.sink}, status=202)

    async def _trigger_outcome(self, request: web.Request) -> web.Response:
        event_id = request.match_info["event_id"]
        try:
            outcome = await self.view.trigger.outcome(event_id)
        except StoreError as exc:
            return web.json_response(logs.REDACTOR.scrub_tree({"error": str(exc)}), status=503)
        if outcome is None:
            return web.json_response(
                {"error": f"this bridge sent no test event {event_id} since it started"},
                status=404,
            )
        # The error text comes from the receiver: masked as the logs are.
        return web.json_response(logs.REDACTOR.scrub_tree(outcome.as_dict()))


def _refused(status: int, error: str, hint: str | None = None) -> web.Response:
    body = {"error": error} if hint is None else {"error": error, "hint": hint}
    return web.json_response(body, status=status)


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(guard.SECURITY_HEADERS)


async def _own_user(request: web.Request) -> bool:
    """Whether the client is the bridge's own user or root (:mod:`bridge.console.peer`)."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    local = transport.get_extra_info("sockname") if transport is not None else None
    if not peer or not local:
        return False
    # The socket table can be long on a busy host: read off the event loop.
    uid = await asyncio.to_thread(peer_uid, tuple(peer[:2]), tuple(local[:2]))
    return is_own(uid)
