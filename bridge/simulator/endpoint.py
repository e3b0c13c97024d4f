"""The ``/v1/ws`` endpoint: authentication (header or ``?token=``), refusal windows, the connection
limit, the per-connection rate limit, and the registry of open connections that routing fans out to
(§1, §5). What a connection says and receives is in ``connection``.

A bad key or a connection over the limit is turned away so that OpenMail's own clients can tell it
from network trouble (§10): by default the upgrade succeeds and the close (4001 / 4008, after an
``error`` frame) waits for the client's first frame, or for ``reject_silence`` seconds of silence;
OpenMail's agent plugin treats those codes as fatal only once its ``subscribe`` is out, and retries
a bad key forever when the close beats it. ``auth_failure="http"`` answers the upgrade itself with
HTTP 401 (429 over the connection limit) instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from aiohttp import WSMessage, WSMsgType, web

from bridge import protocol
from bridge.simulator.connection import (
    CLOSE_MESSAGES,
    AuthForm,
    Connection,
    ConnectionInfo,
    error_frame,
)
from bridge.simulator.keys import AccountKey, bearer_token
from bridge.simulator.records import DeliveryRecord, Rejection, RejectionTrigger

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT: Final = 5.0
"""How long a server-initiated close waits for the peer's close frame."""
UNAUTHORIZED: Final = "unauthorized: invalid API key"
REJECT_SILENCE: Final = 5.0
"""How long a connection that will be rejected waits for the client's first frame before the close
comes anyway (a client that never speaks still learns its verdict)."""


def is_server_close_code(code: int) -> bool:
    """Close codes a server may put in a close frame (RFC 6455 §7.4; 1004-1006 and 1015 never)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The server-side limits of §5, shrinkable for tests."""

    ping_interval: float = protocol.SERVER_PING_INTERVAL
    pong_timeout: float = protocol.SERVER_PONG_TIMEOUT
    rate_limit: tuple[int, float] = (protocol.RATE_LIMIT_MESSAGES, protocol.RATE_LIMIT_WINDOW)
    max_connections: int = protocol.MAX_CONNECTIONS
    auth_failure: Literal["close", "http"] = "close"
    reject_silence: float = REJECT_SILENCE

    def __post_init__(self) -> None:
        if self.ping_interval <= 0 or self.pong_timeout <= 0 or self.max_connections < 1:
            raise ValueError("ping_interval, pong_timeout and max_connections must be positive")
        if self.reject_silence < 0:
            raise ValueError("reject_silence must be >= 0")
        if self.rate_limit[0] < 1 or self.rate_limit[1] <= 0:
            raise ValueError("rate_limit must be (messages >= 1, window > 0)")
        if self.auth_failure not in ("close", "http"):
            raise ValueError("auth_failure must be 'close' or 'http'")


@dataclass(frozen=True, slots=True)
class _Verdict:
    """Why a connection is turned away, and how each form of rejection says so."""

    reason: Literal["unauthorized", "connection_limit"]
    close_code: int
    status: int
    message: str


_BAD_KEY: Final = _Verdict("unauthorized", protocol.CloseCode.UNAUTHORIZED, 401, UNAUTHORIZED)


class WebSocketEndpoint:
    """Accepts and serves WebSocket connections for one account (one API key, its inboxes).

    Args:
        history: the simulator's event history, read (never written) for replay.
        record: called with every delivery record.
        notify: called whenever connections or their filters change.
        clock: monotonic seconds, for refusal windows and the rate limit.
    """

    def __init__(
        self,
        *,
        key: AccountKey,
        owned: frozenset[str],
        history: Sequence[dict[str, object]],
        limits: Limits,
        record: Callable[[DeliveryRecord], None],
        notify: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._key = key
        self._owned = owned
        self._history = history
        self._limits = limits
        self._record = record
        self._notify = notify
        self._clock = clock
        self.connections: dict[int, Connection] = {}
        self.rejections: list[Rejection] = []
        self._rejecting: dict[int, web.BaseRequest] = {}
        """Upgraded connections waiting for their rejection (a first frame or the silence)."""
        self._next_id = 1
        self._refuse_until = 0.0
        self._refuse_mode: Literal["close", "http"] = "close"
        self._refuse_code = int(protocol.CloseCode.GOING_AWAY)

    # --- Knobs ------------------------------------------------------------------------------------

    @property
    def refusing(self) -> bool:
        return self._clock() < self._refuse_until

    def refuse(self, seconds: float, mode: Literal["close", "http"], code: int | None) -> None:
        if mode not in ("close", "http"):
            raise ValueError("mode must be 'close' or 'http'")
        if code is None:
            code = 1001 if mode == "close" else 503
        if mode == "close" and not is_server_close_code(code):
            raise ValueError(f"{code} is not a close code a server may send")
        if mode == "http" and not 400 <= code <= 599:
            raise ValueError("an HTTP refusal needs a 4xx or 5xx status")
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._refuse_until = self._clock() + seconds
        self._refuse_mode, self._refuse_code = mode, code

    def rotate_key(self, new_key: str, *, close_existing: bool) -> None:
        self._key.rotate(new_key)
        if close_existing:
            # Every open connection authenticated with the old key: there is one key per account.
            for conn in list(self.connections.values()):
                conn.close(protocol.CloseCode.UNAUTHORIZED, "unauthorized: API key revoked")

    async def disconnect(self, code: int, *, abrupt: bool) -> int:
        """Close or cut every connection; returns once the close frames are on their way (the
        handshakes finish in the background) or, for ``abrupt``, once the connections are gone.

        ``abrupt`` also cuts connections still waiting for their rejection (not counted: they were
        never open for the account)."""
        if abrupt:
            for request in list(self._rejecting.values()):
                if request.transport is not None:
                    request.transport.abort()
        conns = list(self.connections.values())
        for conn in conns:
            if abrupt:
                conn.abort()
            else:
                conn.close(code, CLOSE_MESSAGES.get(code))
        waits = [(conn.done if abrupt else conn.drained).wait() for conn in conns]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.gather(*waits)
        return len(conns)

    @property
    def pending_rejections(self) -> int:
        """Connections upgraded only to be rejected, still waiting for a first frame."""
        return len(self._rejecting)

    def infos(self) -> list[ConnectionInfo]:
        return [conn.info() for conn in self.connections.values()]

    # --- Serving ----------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> AuthForm | None:
        form: AuthForm
        key = bearer_token(request.headers)
        if key is not None:
            form = "header"
        elif request.query.get("token"):
            key, form = request.query["token"], "query"
        else:
            return None
        return form if self._key.matches(key) else None

    def _verdict(self, auth: AuthForm | None) -> _Verdict | None:
        """Why this connection is turned away; None when it may open."""
        if auth is None:
            return _BAD_KEY
        limit = self._limits.max_connections
        if len(self.connections) >= limit:
            message = f"connection limit exceeded: at most {limit} concurrent connections"
            return _Verdict(
                "connection_limit", protocol.CloseCode.TOO_MANY_CONNECTIONS, 429, message
            )
        return None

    def _rejected(self, verdict: _Verdict, code: int, trigger: RejectionTrigger) -> None:
        self.rejections.append(Rejection(reason=verdict.reason, code=code, trigger=trigger))
        log.info("sim.ws.rejected", code=code, reason=verdict.reason, trigger=trigger)
        self._notify()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refusing = self.refusing
        if refusing and self._refuse_mode == "http":
            log.info("sim.ws.refused", status=self._refuse_code)
            return web.json_response({"error": "refusing connections"}, status=self._refuse_code)
        auth = self._authenticate(request)
        verdict = self._verdict(auth)
        if verdict is not None and not refusing and self._limits.auth_failure == "http":
            self._rejected(verdict, verdict.status, "upgrade")
            return web.json_response({"error": verdict.message}, status=verdict.status)
        # Keepalive is ours (Connection._run_keepalive): aiohttp's heartbeat pings only after idle
        # time and waits heartbeat/2 for the pong, which cannot express OpenMail's 30 s / 10 s.
        ws = web.WebSocketResponse(autoping=False, timeout=CLOSE_TIMEOUT)
        await ws.prepare(request)
        if refusing:
            # A refusal window is an outage the test asked for: closed at once, before any frame.
            log.info("sim.ws.refused", code=self._refuse_code)
            text = CLOSE_MESSAGES.get(self._refuse_code)
            if text is not None:
                await ws.send_str(error_frame(text))
            await ws.close(code=self._refuse_code)
            return ws
        if auth is None or verdict is not None:
            await self._reject(ws, request, verdict or _BAD_KEY)  # (auth None: verdict is set)
            return ws
        conn = Connection(
            self._next_id, ws, request, auth=auth, record=self._record, clock=self._clock
        )
        self._next_id += 1
        self.connections[conn.id] = conn
        self._notify()
        log.info("sim.ws.connected", connection_id=conn.id, auth=auth)
        conn.start(self._limits.ping_interval, self._limits.pong_timeout)
        try:
            await self._receive(conn)
        finally:
            await conn.finish()
            del self.connections[conn.id]
            conn.done.set()
            self._notify()
            # The code we closed with, else the one the peer sent (or 1006 when TCP went first).
            ended = conn.close_code if conn.close_code is not None else ws.close_code
            log.info(
                "sim.ws.closed", connection_id=conn.id, code=None if ended is None else int(ended)
            )
        return ws

    async def _reject(
        self, ws: web.WebSocketResponse, request: web.BaseRequest, verdict: _Verdict
    ) -> None:
        """Close with the verdict's code once the client spoke first or stayed silent too long."""
        token = id(request)
        self._rejecting[token] = request
        self._notify()
        try:
            trigger = await self._first_frame(ws)
        finally:
            del self._rejecting[token]
        if trigger is None:
            log.info("sim.ws.left_before_rejection", reason=verdict.reason)
            return
        self._rejected(verdict, verdict.close_code, trigger)
        with contextlib.suppress(ConnectionError):  # the peer may leave meanwhile
            await ws.send_str(error_frame(verdict.message))
            await ws.close(code=verdict.close_code)

    async def _first_frame(self, ws: web.WebSocketResponse) -> RejectionTrigger | None:
        """Wait for the client's first data frame (``first_frame``) or ``reject_silence`` seconds
        (``silence``); None when the client left first. Pings are answered meanwhile."""
        deadline = asyncio.get_running_loop().time() + self._limits.reject_silence
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    msg = await ws.receive()
                    if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        return "first_frame"
                    if msg.type is WSMsgType.PING:
                        await ws.pong(msg.data)
                    elif msg.type is not WSMsgType.PONG:
                        return None  # close, closing, closed or error: the client is gone
        except TimeoutError:
            return "silence"

    async def _receive(self, conn: Connection) -> None:
        drained = asyncio.create_task(conn.drained.wait())
        try:
            while True:
                receiving = asyncio.create_task(conn.ws.receive())
                await asyncio.wait((receiving, drained), return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    await asyncio.wait((receiving,))
                    if conn.close_code is None:  # a write failed: the peer is gone
                        conn.abort()
                    else:  # all frames out; now the closing handshake (see Connection.close)
                        await conn.ws.close(code=conn.close_code)
                    return
                if not await self._handle(conn, receiving.result()):
                    return
        finally:
            drained.cancel()

    async def _handle(self, conn: Connection, msg: WSMessage) -> bool:
        """Act on one received message; False when the connection is over."""
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return False
        if msg.type is WSMsgType.PING:
            await conn.ws.pong(msg.data)
        elif msg.type is WSMsgType.PONG:
            conn.pong.set()
        elif conn.closing:
            pass  # a close is queued: late client messages are not answered
        elif conn.over_rate_limit(*self._limits.rate_limit):
            limit, window = self._limits.rate_limit
            log.info("sim.ws.rate_limited", connection_id=conn.id)
            message = f"rate limit exceeded: more than {limit} messages in {window:g} s"
            conn.close(protocol.CloseCode.RATE_LIMITED, message)
        elif msg.type is WSMsgType.TEXT:
            conn.handle_text(msg.data, owned=self._owned, history=self._history)
            self._notify()
        else:
            conn.send(error_frame("binary frames are not supported"))
        return True
