"""Webhook listener: verifies OpenMail's signed POSTs and accepts each event durably before a 200.

Runs whenever enabled, so events keep flowing while the WebSocket is down. Every answer comes within
OpenMail's 15 s limit: a store that cannot commit in time gets a 503, and OpenMail retries.

It faces the internet, so everything an unsigned client can send is bounded before it costs
anything: connections and header time (:mod:`bridge.sources.http_guard`), then method, length,
timestamp and signature shape are checked before a byte of the body is read; bodies held at once
share one byte budget; and the HMAC of a large body runs off the event loop, against the claimed
inbox's secret and the account-level ones only, so its cost never grows with the number of
secrets.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from aiohttp import HttpVersion11, StreamReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from bridge import protocol
from bridge.config import WebhookConfig
from bridge.errors import EventError, MissingEventIdError, SpoolFullError, StoreError
from bridge.events import Origin, event_from_object
from bridge.memory import HeapTrimmer, glibc_trim
from bridge.metrics import Metrics
from bridge.sources import Spool
from bridge.sources.http_guard import ByteBudget, ClientErrorLog, GuardedSite
from bridge.store import AcceptOutcome
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.sources.webhook")

ANSWER_WITHIN = 10.0
"""Seconds to wait for the commit before answering 503: well inside OpenMail's 15 s."""
RETRY_AFTER_FULL = "60"
RETRY_AFTER_BUSY = "5"
LINGER = 2.0
"""Seconds aiohttp keeps reading (and dropping) the unread body of a request answered early, so
an honest client still sees the answer; an attacker's body is not read past it."""
_T = TypeVar("_T")


class Rejected(Exception):
    """A request answered with an error status; ``reason`` labels the metric."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail

    @property
    def retry_after(self) -> str | None:
        if self.status != 503:
            return None
        return RETRY_AFTER_FULL if self.reason == "spool_full" else RETRY_AFTER_BUSY


class WebhookSource:
    """An aiohttp server on ``webhook.listen`` answering POSTs to ``webhook.path``."""

    name = "webhook"

    def __init__(
        self, config: WebhookConfig, metrics: Metrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self._spool: Spool | None = None
        self._runner: web.AppRunner | None = None
        self._site: GuardedSite | None = None
        self._budget = ByteBudget(config.buffer_limit)
        # Bodies, refused ones included, leave freed memory in the C heap: give it back after
        # every few MiB received, or a flood would leave the process that much larger.
        self._heap = HeapTrimmer(glibc_trim())
        self._throttles: dict[str, Throttle] = {}
        self._stopping = False
        self.port: int | None = None
        self.last_event_at: float | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, spool: Spool) -> None:
        self._spool = spool
        config = self.config
        app = web.Application(
            client_max_size=config.max_body,
            middlewares=[GuardedSite.tracking(lambda: self._site)],
        )
        app.router.add_route("*", config.path, self._handle, expect_handler=self._expect)
        # Every other path is refused here too rather than by aiohttp's 404, which would keep
        # its connection alive (see _refusal).
        app.router.add_route("*", "/{path:.*}", self._elsewhere, expect_handler=self._elsewhere)
        # aiohttp's graceful shutdown stops reading requests, so one whose body is still arriving
        # can never finish; waiting its default 60 s would only stall the stop. In-flight commits
        # are answered within ANSWER_WITHIN; a cut request is retried by OpenMail.
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=ANSWER_WITHIN,
            keepalive_timeout=config.keepalive_timeout,
            lingering_time=LINGER,
            auto_decompress=False,  # nothing is decompressed (see _check_headers)
            logger=ClientErrorLog("webhook", self._count_rejected),
        )
        await runner.setup()
        listen = config.listen
        site = GuardedSite(
            runner,
            listen.host,
            listen.port,
            ssl_context=self._ssl_context(),
            limit=config.connection_limit,
            header_timeout=config.header_timeout,
            on_drop=self._count_rejected,
            received=self._heap.received,
            server="webhook",
        )
        self._site = site  # before it serves: the middleware finds its connections through it
        try:
            await site.start()
        except OSError as exc:
            self._site = None
            await runner.cleanup()
            raise OSError(
                exc.errno, f"webhook listener cannot bind {listen}: {exc.strerror}"
            ) from None
        self._runner = runner
        self.port = site.port
        log.info(
            "webhook.listening",
            listen=f"{listen.host}:{self.port}",
            path=config.path,
            tls=config.tls is not None,
            max_connections=config.connection_limit,
            max_buffered_bytes=config.buffer_limit,
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

    def _count_rejected(self, reason: str) -> None:
        self.metrics.webhook_rejected.labels(reason).inc()

    def begin_stop(self) -> None:
        """Answer 503 from now on, so OpenMail retries what we no longer take."""
        self._stopping = True

    async def stop(self) -> None:
        self._stopping = True
        self._heap.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def update_config(self, config: WebhookConfig) -> None:
        """Swap secrets and limits in place (SIGHUP); ``listen``, ``path``, ``max_connections``,
        ``header_timeout`` and ``keepalive_timeout`` need a restart."""
        self.config = config
        self._budget.limit = config.buffer_limit

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
            self._check_request(request)
            if self._spool is None:
                raise Rejected(503, "stopping", "the bridge is shutting down")
            return await self._receive(request, self._spool)
        except Rejected as exc:
            return self._refusal(exc, request)

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: the client waits for a go before sending its body, so every
        check that needs no body runs first; a request that would be refused gets its refusal,
        not a ``100 Continue`` inviting the bytes it would be refused for."""
        if request.version != HttpVersion11:
            return None  # HTTP/1.0 has no interim answers: the body simply follows
        try:
            if request.headers.get(hdrs.EXPECT, "").lower() != "100-continue":
                raise Rejected(417, "expect", "only Expect: 100-continue is understood")
            self._check_request(request)
        except Rejected as exc:
            return self._refusal(exc, request)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper is still to come
        return None

    def _check_request(self, request: web.Request) -> None:
        """Everything decidable from the request line and headers; raises Rejected."""
        if request.method != "POST":
            raise Rejected(405, "method", f"method {request.method} not allowed; use POST")
        if self._stopping:
            raise Rejected(503, "stopping", "the bridge is shutting down")
        self._check_headers(request)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        return self._refusal(Rejected(404, "path", "no webhook listener at this path"), request)

    def _refusal(self, exc: Rejected, request: web.Request) -> web.Response:
        """The answer to a refused request, counted and logged; it ends the connection.

        Kept alive, a connection whose requests are refused would be held by a client with no
        secret for as long as it sent one within the keep-alive timeout (a forged request every
        12 s keeps all of max_connections busy); closed, it must open a new one each time, which
        the header timeout and the connection cap then bound. OpenMail sends each retry on a
        fresh connection anyway."""
        self._count_rejected(exc.reason)
        self._log_rejected(exc, request)
        headers = {"Allow": "POST"} if exc.status == 405 else {}
        if exc.retry_after is not None:
            headers["Retry-After"] = exc.retry_after
        response = web.json_response({"error": exc.detail}, status=exc.status, headers=headers)
        response.force_close()
        return response

    def _log_rejected(self, exc: Rejected, request: web.Request) -> None:
        # Unsigned clients choose how often this runs: one line per reason per minute at most,
        # saying how many were left out; the metric counts every one.
        throttle = self._throttles.setdefault(exc.reason, Throttle())
        if (extra := throttle.admit_fields("rejected_since_last_line")) is None:
            return
        level = "info" if exc.status in (405, 503) else "warning"
        getattr(log, level)(
            "webhook.rejected",
            status=exc.status,
            reason=exc.reason,
            detail=exc.detail,
            peer=request.remote,
            **extra,
        )

    def _check_headers(self, request: web.Request) -> None:
        """Length, encoding, timestamp and signature shape: all before the body is read."""
        length = request.content_length
        if length is not None and length > self.config.max_body:
            raise Rejected(
                413,
                "too_large",
                f"body of {length} bytes is over max_body ({self.config.max_body})",
            )
        # OpenMail sends bodies as they are. A compressed one would be charged to the byte
        # budget at its wire size and held decompressed: refused unread, whatever the encoding.
        encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
        if encoding not in ("", "identity"):
            raise Rejected(
                415,
                "unsupported_encoding",
                f"Content-Encoding {encoding[:40]!r} is not accepted: send the body uncompressed",
            )
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
        if not protocol.signature_well_formed(signature):
            raise Rejected(400, "bad_signature", "X-Signature is not 64 hex digits")

    async def _read_body(self, request: web.Request) -> bytes | bytearray:
        length = request.content_length
        plain = hdrs.TRANSFER_ENCODING not in request.headers
        try:
            async with asyncio.timeout(self.config.body_timeout):
                if length is not None and plain:
                    return await _read_exactly(request.content, length)
                return await _read_to_end(request.content, self.config.max_body)
        except TimeoutError:
            raise Rejected(
                408, "body_timeout", f"body not received within {self.config.body_timeout:g}s"
            ) from None
        except (HttpProcessingError, RequestPayloadError) as exc:
            # A body that cannot be decoded (a bogus Content-Encoding, a broken chunk).
            raise Rejected(400, "bad_body", f"cannot read the body: {exc}") from None
        except ConnectionError:
            # Nobody is left to read the answer; the rejection is still counted and logged.
            raise Rejected(
                400, "bad_body", "the connection closed before the body was complete"
            ) from None

    async def _off_loop(self, size: int, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` on a worker thread for a large body (hashlib and the JSON decoder work on
        the bytes while the loop answers others); inline for a small one, where a thread hop
        would cost more than the work."""
        if size > self.config.offload_above:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def _decode(self, body: bytes) -> object:
        try:
            return await self._off_loop(len(body), protocol.loads_strict, body)
        except protocol.ProtocolError as exc:
            raise Rejected(400, "malformed_json", f"body is {exc}") from None

    async def _verified(
        self, request: web.Request, timestamp: str, body: bytes | bytearray
    ) -> tuple[object, bytes]:
        """The decoded body and its bytes, once its signature matched; raises Rejected otherwise.

        Nothing is decoded before a signature matched: a body read into a buffer becomes bytes,
        and is parsed, only then. A per-inbox secret vouches for its own inbox's events only: the
        inboxes the bytes name pick which of those secrets to try, and the decoded body must then
        claim the inbox whose secret matched."""
        config = self.config
        signature = request.headers[protocol.SIGNATURE_HEADER]
        accounts = [s.get() for s in config.account_secrets]
        if await self._matches(accounts, timestamp, body, signature):
            raw = bytes(body)  # the same object when it is bytes already
            return await self._decode(raw), raw
        if config.inbox_secrets:  # a byte search, on a thread for a large body
            named = await self._off_loop(
                len(body), protocol.named_inboxes, body, config.inbox_secrets.keys()
            )
            for inbox in named:
                secret = config.inbox_secrets[inbox].get()
                if await self._matches([secret], timestamp, body, signature):
                    raw = bytes(body)
                    data = await self._decode(raw)
                    if protocol.claimed_inbox(data) != inbox:
                        detail = f"signed with the secret of inbox {inbox}, for another inbox"
                        raise Rejected(400, "bad_signature", detail)
                    return data, raw
        raise Rejected(400, "bad_signature", "X-Signature does not match the body")

    async def _matches(
        self, secrets: list[str], timestamp: str, body: bytes | bytearray, signature: str
    ) -> bool:
        if not secrets:
            return False
        return await self._off_loop(
            len(body), protocol.signature_matches, secrets, timestamp, body, signature
        )

    async def _receive(self, request: web.Request, spool: Spool) -> web.StreamResponse:
        timestamp = request.headers[protocol.TIMESTAMP_HEADER].strip()  # _check_headers saw it
        # Without a Content-Length (chunked) the body may be as large as max_body.
        reserved = request.content_length or self.config.max_body
        if not self._budget.try_take(reserved):
            raise Rejected(
                503,
                "busy",
                f"{self._budget.held} request-body bytes already held "
                f"(max_buffered_bytes={self._budget.limit}); retry",
            )
        try:
            data, body = await self._verified(request, timestamp, await self._read_body(request))
            return await self._accept_verified(request, spool, data, body)
        finally:
            self._budget.give_back(reserved)

    async def _accept_verified(
        self, request: web.Request, spool: Spool, data: object, body: bytes
    ) -> web.StreamResponse:
        if not isinstance(data, dict):
            raise Rejected(400, "malformed_json", "body is not a JSON object")
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
        except MissingEventIdError as exc:
            raise Rejected(400, "no_event_id", str(exc)) from None
        except EventError as exc:
            raise Rejected(400, "malformed_json", str(exc)) from None
        if header_id and header_id != event.event_id:
            log.info(
                "webhook.event_id_mismatch", event_id=event.event_id, header_event_id=header_id
            )
        try:
            # A commit that outlives the answer still lands, and OpenMail's retry of it is then
            # recognised as a duplicate. (A timeout scope, not wait_for: no extra callback
            # between the commit and this request's wake-up.)
            async with asyncio.timeout(ANSWER_WITHIN):
                (outcome,) = await spool.accept([event])
            if isinstance(outcome, StoreError):
                raise outcome  # this event refused (the spool is full): answered below
        except TimeoutError:
            raise Rejected(503, "timeout", "the store did not commit in time; retry") from None
        except SpoolFullError as exc:
            raise Rejected(503, "spool_full", str(exc)) from None
        except StoreError as exc:
            raise Rejected(503, "store_unavailable", str(exc)) from None
        self.last_event_at = event.received_at
        duplicate = outcome is not AcceptOutcome.ACCEPTED  # a conflict is answered like one
        return web.json_response({"ok": True, "event_id": event.event_id, "duplicate": duplicate})


async def _read_to_end(stream: StreamReader, limit: int) -> bytearray:
    """A body of unannounced length (chunked), refused once it passes ``limit`` bytes.

    The limit is the config's at this request, not aiohttp's ``client_max_size``, which is fixed
    when the application is built: a reload changes ``max_body`` for every body.

    Raises:
        Rejected: over ``limit`` (413).
    """
    body = bytearray()
    while chunk := await stream.readany():
        if len(body) + len(chunk) > limit:
            raise Rejected(413, "too_large", f"body is over max_body ({limit})")
        body += chunk
    return body


async def _read_exactly(stream: StreamReader, length: int) -> bytearray:
    """A body that announced ``length`` bytes, read into one buffer of that size.

    aiohttp's ``read()`` grows a buffer, copies it into bytes and keeps those on the request,
    which an idle keep-alive connection holds after the answer: bodies of up to ``max_body``
    outliving the byte budget, as many as a client keeps connections open. This buffer lives
    only as long as the handler needs it.

    Raises:
        Rejected: the body ended before ``length`` bytes.
    """
    body = bytearray(length)
    view = memoryview(body)
    filled = 0
    while filled < length:
        chunk = await stream.readany()
        if not chunk:
            raise Rejected(
                400, "bad_body", f"body ended after {filled} of its {length} announced bytes"
            )
        end = filled + len(chunk)
        if end > length:  # the HTTP parser stops at Content-Length; never trust that here
            raise Rejected(400, "bad_body", f"body is longer than its {length} announced bytes")
        view[filled:end] = chunk
        filled = end
    view.release()
    return body
