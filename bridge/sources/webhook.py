"""Webhook listener: verifies OpenMail's signed POSTs and accepts each event durably before a 200.

Runs whenever enabled, so events keep flowing while the WebSocket is down. Every answer comes within
OpenMail's 15 s limit: a store that cannot commit in time gets a 503, and OpenMail retries.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from bridge import protocol
from bridge.config import WebhookConfig
from bridge.errors import EventError, SpoolFullError, StoreError
from bridge.events import Origin, event_from_object
from bridge.metrics import Metrics
from bridge.pipeline import uncancellable
from bridge.sources import Accept
from bridge.store import AcceptOutcome

log = structlog.get_logger("bridge.sources.webhook")

ANSWER_WITHIN = 10.0
"""Seconds to wait for the commit before answering 503: well inside OpenMail's 15 s."""
RETRY_AFTER_FULL = "60"


class Rejected(Exception):
    """A request answered with an error status; ``reason`` labels the metric."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


class WebhookSource:
    """An aiohttp server on ``webhook.listen`` answering POSTs to ``webhook.path``."""

    name = "webhook"

    def __init__(
        self, config: WebhookConfig, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._accept: Accept | None = None
        self._runner: web.AppRunner | None = None
        self._stopping = False
        self.port: int | None = None
        self.last_event_at: float | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, accept: Accept) -> None:
        self._accept = accept
        app = web.Application(client_max_size=self.config.max_body)
        app.router.add_route("*", self.config.path, self._handle)
        # aiohttp's graceful shutdown stops reading requests, so one whose body is still arriving
        # can never finish; waiting its default 60 s would only stall the stop. In-flight commits
        # are answered within ANSWER_WITHIN; a cut request is retried by OpenMail.
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=ANSWER_WITHIN
        )
        await runner.setup()
        listen = self.config.listen
        site = web.TCPSite(runner, listen.host, listen.port, ssl_context=self._ssl_context())
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                exc.errno, f"webhook listener cannot bind {listen}: {exc.strerror}"
            ) from None
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else listen.port
        log.info(
            "webhook.listening",
            listen=f"{listen.host}:{self.port}",
            path=self.config.path,
            tls=self.config.tls is not None,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.config.tls.cert, self.config.tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"openmail.webhook.tls: cannot load certificate/key: {exc}") from None
        return context

    def begin_stop(self) -> None:
        """Answer 503 from now on, so OpenMail retries what we no longer take."""
        self._stopping = True

    async def stop(self) -> None:
        self._stopping = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def update_config(self, config: WebhookConfig) -> None:
        """Swap secrets and limits in place (SIGHUP); ``listen`` and ``path`` need a restart."""
        self.config = config

    @property
    def receiving(self) -> bool:
        return self._runner is not None and not self._stopping

    def status(self) -> dict[str, object]:
        return {
            "state": "listening" if self.receiving else "stopped",
            "listen": f"{self.config.listen.host}:{self.port}",
            "path": self.config.path,
            "last_event_at": self.last_event_at,
        }

    # --- requests --------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.method != "POST":
                raise Rejected(405, "method", f"method {request.method} not allowed; use POST")
            if self._stopping or self._accept is None:
                raise Rejected(503, "stopping", "the bridge is shutting down")
            return await self._receive(request, self._accept)
        except Rejected as exc:
            self.metrics.webhook_rejected.labels(exc.reason).inc()
            level = "info" if exc.status in (405, 503) else "warning"
            getattr(log, level)(
                "webhook.rejected",
                status=exc.status,
                reason=exc.reason,
                detail=exc.detail,
                peer=request.remote,
            )
            headers = {"Allow": "POST"} if exc.status == 405 else {}
            if exc.status == 503:
                headers["Retry-After"] = RETRY_AFTER_FULL if exc.reason == "spool_full" else "5"
            return web.json_response({"error": exc.detail}, status=exc.status, headers=headers)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self.config.max_body:
            raise Rejected(
                413,
                "too_large",
                f"body of {request.content_length} bytes is over max_body ({self.config.max_body})",
            )
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise Rejected(
                413, "too_large", f"body is over max_body ({self.config.max_body})"
            ) from None
        except (HttpProcessingError, RequestPayloadError) as exc:
            # A body that cannot be decoded (a bogus Content-Encoding, a broken chunk).
            raise Rejected(400, "bad_body", f"cannot read the body: {exc}") from None

    def _verify(self, request: web.Request, body: bytes) -> frozenset[str] | None:
        """Check timestamp and signature on the raw bytes. Returns the inboxes whose secret matched
        (None for an account-level secret)."""
        problem = protocol.check_timestamp(
            request.headers.get(protocol.TIMESTAMP_HEADER), self._clock(), self.config.tolerance
        )
        if problem is not None:
            detail = {
                protocol.TimestampProblem.MISSING: "missing X-Timestamp header",
                protocol.TimestampProblem.MALFORMED: "X-Timestamp is not a Unix time in seconds",
                protocol.TimestampProblem.STALE: "X-Timestamp is outside the allowed tolerance",
            }[problem]
            raise Rejected(400, problem.value, detail)
        signature = request.headers.get(protocol.SIGNATURE_HEADER, "")
        if not signature:
            raise Rejected(400, "missing_signature", "missing X-Signature header")
        timestamp = request.headers[protocol.TIMESTAMP_HEADER].strip()
        account = [s.get() for s in self.config.account_secrets]
        if account and protocol.signature_matches(account, timestamp, body, signature):
            return None
        # Every inbox whose secret matches, not the first: two inboxes may share a secret.
        inboxes = frozenset(
            inbox
            for inbox, secret in self.config.inbox_secrets.items()
            if protocol.signature_matches((secret.get(),), timestamp, body, signature)
        )
        if inboxes:
            return inboxes
        raise Rejected(400, "bad_signature", "X-Signature does not match the body")

    async def _receive(self, request: web.Request, accept: Accept) -> web.StreamResponse:
        body = await self._read_body(request)
        signed_by_inboxes = self._verify(request, body)
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # bad UTF-8, too deep, integers too long
            raise Rejected(400, "malformed_json", "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise Rejected(400, "malformed_json", "body is not a JSON object")
        inbox_id = data.get("inbox_id")
        if signed_by_inboxes is not None and (
            not isinstance(inbox_id, str) or inbox_id not in signed_by_inboxes
        ):
            # A per-inbox secret vouches for its own inbox's events only.
            raise Rejected(400, "bad_signature", "signed with another inbox's secret")
        header_id = request.headers.get(protocol.EVENT_ID_HEADER) or None
        try:
            event = event_from_object(
                data,
                body,
                Origin.WEBHOOK,
                received_at=self._clock(),
                fallback_event_id=header_id,
                require_type=False,
            )
        except EventError as exc:
            reason = "no_event_id" if "event_id" in str(exc) else "malformed_json"
            raise Rejected(400, reason, str(exc)) from None
        if header_id and header_id != event.event_id:
            log.info(
                "webhook.event_id_mismatch", event_id=event.event_id, header_event_id=header_id
            )
        try:
            # A commit that outlives the answer still lands, and OpenMail's retry of it is then
            # recognised as a duplicate.
            outcome = await asyncio.wait_for(uncancellable(accept(event)), ANSWER_WITHIN)
        except TimeoutError:
            raise Rejected(503, "timeout", "the store did not commit in time; retry") from None
        except SpoolFullError as exc:
            raise Rejected(503, "spool_full", str(exc)) from None
        except StoreError as exc:
            raise Rejected(503, "store_unavailable", str(exc)) from None
        self.last_event_at = event.received_at
        duplicate = outcome is AcceptOutcome.DUPLICATE
        return web.json_response({"ok": True, "event_id": event.event_id, "duplicate": duplicate})
