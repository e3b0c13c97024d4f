"""Admin server: ``/healthz`` (liveness), ``/readyz`` (can events get in?), ``/metrics``,
``/status``, and ``/trigger`` (send a test event to one sink, then ask how its delivery went).

Separate from the webhook listener so it can stay on loopback while the webhook faces OpenMail.
Liveness is only "the event loop turns": a full disk or a down sink must not make an orchestrator
restart a bridge that is waiting it out.

Paths are public or private. Public ones (``PUBLIC_PATHS``) are what probes and Prometheus need
and never show a payload or a credential: they answer without a token. Every other path, those
added later included, is private: with ``admin.token`` set it needs that bearer token on any
address; without one it answers only on a loopback address, and 403 elsewhere (the bridge still
starts, so a container's documented ``docker run`` keeps working; the supervisor logs
``admin.private_paths_disabled`` at start, from the config's warnings).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge import logs
from bridge.config import AdminConfig
from bridge.errors import StoreError
from bridge.health import Readiness
from bridge.trigger import Refusal, Refused, Trigger

log = structlog.get_logger("bridge.admin")

PUBLIC_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})
"""Answer without a token: what liveness/readiness probes and a Prometheus scrape need."""
REFUSAL_STATUS: Final = {
    Refusal.UNKNOWN_SINK: 404,
    Refusal.STOPPING: 503,
    Refusal.NOT_STORED: 503,
}


class AdminView(Protocol):
    """What the admin server shows of a bridge; the supervisor provides it."""

    def readiness(self) -> tuple[Readiness, Mapping[str, str]]:
        """The bridge's readiness and each part's state."""
        ...

    async def status(self) -> Mapping[str, object]:
        """The ``/status`` report."""
        ...

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition, gauges brought up to date."""
        ...

    @property
    def trigger(self) -> Trigger:
        """Sends test events to one sink."""
        ...


class AdminServer:
    """The admin HTTP server.

    Args:
        config: the ``admin`` section: where to listen, and the bearer token of private paths.
        view: the bridge it reports on.
    """

    def __init__(self, config: AdminConfig, view: AdminView) -> None:
        self.config = config
        self.view = view
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/trigger", self._trigger)
        app.router.add_get("/trigger/{event_id}", self._trigger_outcome)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        listen = self.config.listen
        site = web.TCPSite(runner, listen.host, listen.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"admin server cannot bind {listen}: {exc.strerror}") from None
        self._runner = runner
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else listen.port
        log.info("admin.listening", listen=f"{listen.host}:{self.port}")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        token = self.config.token
        if token is None:
            if self.config.listen.is_loopback:
                return await handler(request)
            return web.json_response(
                {
                    "error": "this path is disabled: the admin server listens on "
                    f"{self.config.listen} without admin.token",
                    "hint": "set admin.token and send it as 'Authorization: Bearer <token>', "
                    "or listen on a loopback address",
                },
                status=403,
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Constant-time, so the response time does not tell how much of a guess was right.
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.get().encode()
        )
        if not ok:
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await handler(request)

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
