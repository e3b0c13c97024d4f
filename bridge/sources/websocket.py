"""WebSocket source: the OpenMail subscription, held open for months.

The loop: wait until the spool has room -> connect with the API key -> subscribe with the spool's
replay cursor -> receive, with keepalive and a stale-connection watchdog -> on a close, sleep the
delay the reconnect policy gives for its kind. This module does the I/O only: what frames mean and
how a close is classified live in ``ws_session``, how long to wait in ``bridge.backoff``, how
events reach the spool (the in-flight bound, batches) in ``ws_intake``, how fast messages may go
out (OpenMail's rate limit) in ``ws_pacing``. The cursor moves only with a commit, so a reconnect
replays whatever was not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import aiohttp
import structlog
from aiohttp import WSMsgType

from bridge import protocol
from bridge.backoff import ReconnectPolicy
from bridge.config import OpenMailConfig
from bridge.errors import StoreError
from bridge.events import Event
from bridge.metrics import Metrics
from bridge.sources import Spool, ws_session
from bridge.sources.ws_intake import Intake
from bridge.sources.ws_pacing import Pacer
from bridge.sources.ws_session import ConnectionState, Deliver, Disconnect, Health, Session
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.sources.websocket")

STOP_TIMEOUT: Final = 10.0
"""How long ``stop()`` waits for the connection loop (and the commits it has in flight)."""
ERROR_FOLLOW_UP: Final = 1.0
"""After an ``error`` frame during subscribe, how long to wait for a close that explains it."""
DRAIN_TIMEOUT: Final = 10.0
"""How long a closing connection waits for the commits of what it read."""
CLOSED: Final = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR})
"""Message types that end a connection."""


class Disconnected(Exception):
    """Unwinds one connection; ``cause`` says how it ended."""

    def __init__(self, cause: Disconnect) -> None:
        super().__init__(cause.reason)
        self.cause = cause


@dataclass(slots=True)
class _Link:
    """One open connection: its socket, its protocol state, and where its events go."""

    ws: aiohttp.ClientWebSocketResponse
    session: Session
    spool: Spool
    pacer: Pacer
    """Every message sent on this connection passes it: OpenMail's rate limit."""
    early: list[Event] = field(default_factory=list)
    """Events that came before ``subscribed``: they go to the spool first, in order."""
    heard: float = 0.0
    """Loop time of the last frame read, or of the end of a hold (see ``_watch_silence``)."""


class WebSocketSource:
    """The OpenMail WebSocket as a :class:`~bridge.sources.Source`.

    Args:
        config: the ``openmail`` section (key, WebSocket options, ``webhook.max_body``).
        metrics: where connection and frame counters go.
        session: an aiohttp session to connect with; by default one is made and closed here.
        policy: when to reconnect; by default one on ``config.websocket.reconnect``.
        pacing: makes the rate-limit pacer of each new connection.
    """

    name = "websocket"

    def __init__(
        self,
        config: OpenMailConfig,
        metrics: Metrics,
        *,
        session: aiohttp.ClientSession | None = None,
        policy: ReconnectPolicy | None = None,
        pacing: Callable[[], Pacer] = Pacer,
    ) -> None:
        self.config = config
        self._pacing = pacing
        self.metrics = metrics
        self._http = session
        self._own_http = session is None
        self._policy = policy or ReconnectPolicy(config.websocket.reconnect)
        self._spool: Spool | None = None
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing: asyncio.Future[bool] | None = None
        self._invalid_log = Throttle()
        self._server_error_log = Throttle()
        self._too_large_log = Throttle()
        self._stopping = asyncio.Event()
        self._reconnect_now = asyncio.Event()
        self.health = Health(since=time.time())
        self.on_rejected: Callable[[Disconnect], bool] | None = None
        """Asked once per new rejection no retry mends (a key, an inbox not owned, too many
        connections); True when its owner stops the bridge over it and says why (``listen``)."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, spool: Spool) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._spool = spool
        self.metrics.ws_enabled.set(1)  # an alert on websocket_connected needs to know
        self._task = asyncio.create_task(self._run(spool), name="websocket")

    async def stop(self) -> None:
        self._stopping.set()
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=protocol.CloseCode.NORMAL), 2.0)
        if self._task is not None:
            # Commits in flight finish; a loop that does not end promptly is cancelled, so a
            # stop can never hang on the network.
            done, _ = await asyncio.wait([self._task], timeout=STOP_TIMEOUT)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._own_http and self._http is not None:
            await self._http.close()
        self._set_state(ConnectionState.STOPPED)

    def reconfigure(self, config: OpenMailConfig) -> None:
        """Use a new key or filters (SIGHUP): reconnect when they changed."""
        old = self.config
        self.config = config
        self._policy.settings = config.websocket.reconnect
        if ws_session.connection_identity(old) != ws_session.connection_identity(config):
            log.info("ws.reconfigured", reconnect=True)
            self._reconnect_now.set()
            ws = self._ws
            if ws is not None and not ws.closed:
                self._closing = asyncio.ensure_future(ws.close(code=protocol.CloseCode.NORMAL))

    @property
    def receiving(self) -> bool:
        return self.state is ConnectionState.SUBSCRIBED

    @property
    def state(self) -> ConnectionState:
        return self.health.state

    @property
    def possible_gaps(self) -> int:
        return self.health.possible_gaps

    @property
    def attempts(self) -> int:
        return self.health.attempts

    def status(self) -> dict[str, object]:
        return self.health.status(self._spool.cursor if self._spool is not None else None)

    def _set_state(self, state: ConnectionState) -> None:
        self.health.enter(state, time.time())
        self.metrics.ws_connected.set(1 if state is ConnectionState.SUBSCRIBED else 0)

    # --- reconnect loop --------------------------------------------------------------------

    async def _run(self, spool: Spool) -> None:
        room_needed = 0
        while not self._stopping.is_set():
            needed, room_needed = room_needed, 0
            try:
                await self._connect_once(spool, needed)
            except Disconnected as exc:
                if exc.cause.kind is ws_session.DisconnectKind.STOPPING:
                    return
                room_needed = exc.cause.room_needed
                delay = self._policy.next_delay(exc.cause.kind.pace)
                self._went_down(exc.cause, delay)
                await self._pause(delay)
            except Exception:
                # A bug must not end the subscription for the life of the daemon: log it loudly
                # and start over at the backoff cap.
                log.exception("ws.unexpected_error")
                self._set_state(ConnectionState.DOWN)
                self._policy.reset()
                await self._pause(self._policy.settings.max)
            else:
                # A connection that stayed up a while ended: a fresh backoff curve, a short pause.
                await self._pause(self._policy.settle_delay())

    async def _pause(self, seconds: float) -> None:
        self._reconnect_now.clear()
        await self._policy.sleep(seconds, self._stopping, self._reconnect_now)
        self._reconnect_now.clear()  # one that ended the pause is no reason to close the next

    def _went_down(self, cause: Disconnect, delay: float) -> None:
        self.metrics.ws_reconnects.inc()
        report = self.health.went_down(cause, time.time())
        self._set_state(self.health.state)
        fields = {"reason": cause.reason, "close_code": cause.code, "retry_in": round(delay, 3)}
        if report is ws_session.DownLog.REJECTED and self.on_rejected and self.on_rejected(cause):
            # No retry follows: the daemon's hint (a config key, "retrying") would mislead.
            log.info("ws.rejected", cause=str(cause.kind), **fields, owner_stops=True)
            return
        match report:
            case ws_session.DownLog.REJECTED:
                hint = cause.kind.hint_for(webhook=self.config.webhook.enabled)
                log.error("ws.rejected", cause=str(cause.kind), **fields, hint=hint)
            case ws_session.DownLog.STILL_REJECTED:
                log.warning("ws.retrying", cause=str(cause.kind), **fields)
            case ws_session.DownLog.DISCONNECTED:
                log.warning("ws.disconnected", **fields)
            case ws_session.DownLog.RETRYING:
                log.info("ws.retrying", **fields)

    async def _wait_for_room(self, spool: Spool, room_needed: int) -> None:
        # Room for the event the spool refused, not merely any room (see Disconnect.room_needed).
        # An event larger than the whole bound never fits; then any room will do.
        size = room_needed if room_needed <= spool.max_bytes else 0
        if spool.has_room_for(size):
            return
        self._set_state(ConnectionState.PAUSED)
        log.warning("ws.paused", reason="the spool cannot take events; reconnecting when it can")
        room = asyncio.ensure_future(spool.wait_room(size))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([room, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            room.cancel()
            stopping.cancel()
        if room.done() and not room.cancelled():
            room.result()  # what the spool raised, if it did

    async def _connect_once(self, spool: Spool, room_needed: int) -> None:
        """One connection, start to end. Returns only after a long-lived connection; else raises."""
        await self._wait_for_room(spool, room_needed)
        if self._stopping.is_set():
            raise Disconnected(ws_session.STOPPING)
        ws = await self._open()
        self._ws = ws
        if self._stopping.is_set():  # stop() ran while we were connecting: it saw no socket
            await ws.close(code=protocol.CloseCode.NORMAL)
            self._ws = None
            raise Disconnected(ws_session.STOPPING)
        cfg = self.config.websocket
        session = Session(
            cfg.inbox_ids, cfg.event_types, spool.cursor, max_body=self.config.webhook.max_body
        )
        link = _Link(ws, session, spool, self._pacing())
        try:
            await self._subscribe(link)
            self._policy.up()
            await self._receive(link)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise Disconnected(Disconnect.connection_failed(exc)) from None
        finally:
            self._ws = None
            if not ws.closed:
                await ws.close()
        if self._policy.ended() and not self._stopping.is_set():
            self.health.ended(time.time())
            self._set_state(ConnectionState.DOWN)
            log.warning("ws.disconnected", reason="connection closed", close_code=ws.close_code)
            return
        if self._stopping.is_set():
            raise Disconnected(ws_session.STOPPING)
        raise self._closed(link)

    async def _open(self) -> aiohttp.ClientWebSocketResponse:
        cfg = self.config.websocket
        assert self._http is not None
        key = self.config.api_key.get() if self.config.api_key else ""
        self._set_state(ConnectionState.CONNECTING)
        try:
            return await self._http.ws_connect(
                cfg.url,
                headers={"Authorization": f"Bearer {key}"},
                heartbeat=cfg.ping_interval,  # WebSocket pings, with aiohttp's pong deadline
                max_msg_size=self.config.webhook.max_body,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise Disconnected(Disconnect.handshake_refused(exc.status)) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Disconnected(Disconnect.unreachable(exc)) from None

    @staticmethod
    async def _read(link: _Link) -> aiohttp.WSMessage:
        msg = await link.ws.receive()
        if msg.type is WSMsgType.CLOSE and isinstance(msg.data, int):
            link.session.peer_closed(msg.data)
        return msg

    def _closed(self, link: _Link) -> Disconnected:
        cause = link.session.closed(link.ws.close_code, reconfiguring=self._reconnect_now.is_set())
        # The replay sends the same event again at each reconnect: one line a minute, not one
        # error per retry.
        if cause.frame_too_large:
            extra = self._too_large_log.admit_fields("closes_since_last_line")
            if extra is not None:
                log.error(
                    "ws.frame_too_large",
                    max_body=self.config.webhook.max_body,
                    hint="an event is larger than openmail.webhook.max_body, which bounds one "
                    "WebSocket frame too; raise it and reload",
                    **extra,
                )
        return Disconnected(cause)

    # --- subscribing -----------------------------------------------------------------------

    async def _subscribe(self, link: _Link) -> None:
        """Send ``subscribe`` and wait for ``subscribed``; handles an unknown replay cursor."""
        cfg, session = self.config.websocket, link.session
        await self._send(link, session.subscribe())
        try:
            async with asyncio.timeout(cfg.subscribe_timeout):
                while True:
                    msg = await self._read(link)
                    if msg.type in CLOSED:
                        raise self._closed(link)
                    if msg.type is WSMsgType.BINARY:
                        self._pass_over(session.binary(len(msg.data)))
                    if msg.type is not WSMsgType.TEXT:
                        continue
                    action = session.receive(msg.data, time.time())
                    if isinstance(action, ws_session.Subscribed):
                        break
                    if isinstance(action, ws_session.SubscribeError):
                        await self._subscribe_failed(link, action)
                    elif isinstance(action, Deliver):
                        # Kept for the queue: if OpenMail applied a subscribe it answered with
                        # an error, this is a live event that no replay would bring again.
                        link.early.append(action.event)
                    else:
                        self._pass_over(action)
        except TimeoutError:
            raise Disconnected(session.no_answer(cfg.subscribe_timeout)) from None
        recovered = self.health.came_up(time.time()) or None
        self._set_state(ConnectionState.SUBSCRIBED)
        log.info("ws.connected", url=cfg.url, cursor=session.cursor, recovered=recovered)

    async def _subscribe_failed(self, link: _Link, error: ws_session.SubscribeError) -> None:
        """An ``error`` answered ``subscribe``: raises, or subscribes again without the cursor."""
        # An error has no code: a close right after it says what it was.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ERROR_FOLLOW_UP):
                msg = await self._read(link)
            if msg.type in CLOSED:
                raise self._closed(link)
            if msg.type is WSMsgType.TEXT:
                kept = link.session.receive_after_error(msg.data)
                if isinstance(kept, Deliver):
                    link.early.append(kept.event)
                else:
                    self._pass_over(kept)
        decision = link.session.subscribe_failed(error.message)
        if isinstance(decision, Disconnect):
            raise Disconnected(decision)
        self._possible_gap("cursor_reset", cursor=decision.cursor, error=decision.message)
        with contextlib.suppress(StoreError):
            await link.spool.clear_cursor()
        await self._send(link, decision.frame)

    async def _send(self, link: _Link, frame: str) -> None:
        """Send one client message within OpenMail's rate limit. A stop or a new configuration
        during a hold closes the connection instead: a replay whose next page is never asked for
        would let live events move the cursor past the rest of it."""
        held = await link.pacer.admit(self._stopping, self._reconnect_now)
        if held is None:
            await link.ws.close(code=protocol.CloseCode.NORMAL)
            return
        if held > 0:
            # The server had nothing to answer while the message waited: not its silence.
            link.heard = asyncio.get_running_loop().time()
            log.info("ws.paced", held_for=round(held, 3), limit=link.pacer.limit)
        await link.ws.send_str(frame)

    def _possible_gap(self, reason: str, **fields: object) -> None:
        """Events may have been missed on the WebSocket path: count it and say so."""
        self.health.possible_gaps += 1
        self.metrics.possible_gaps.labels(reason).inc()
        log.warning(f"ws.{reason}", **fields, hint=ws_session.GAP_HINTS[reason])

    def _pass_over(self, action: ws_session.Received) -> None:
        """A frame that carries no event: log what the server said, count what is invalid."""
        if isinstance(action, ws_session.ServerError):
            extra = self._server_error_log.admit_fields("errors_since_last_line")
            if extra is not None:
                log.warning("ws.server_error", message=action.message[:200], **extra)
        if not isinstance(action, ws_session.Invalid):
            return
        # The server chooses how often this runs: a hostile or broken one must not flood the
        # journal. Every frame is counted; one line per minute says how many were not logged.
        self.metrics.ws_frames_invalid.labels(action.reason).inc()
        if (extra := self._invalid_log.admit_fields("ignored_since_last_line")) is not None:
            log.warning(
                "ws.frame_ignored", reason=str(action.reason), detail=action.detail[:200], **extra
            )

    # --- receiving -------------------------------------------------------------------------

    async def _receive(self, link: _Link) -> None:
        ws = link.ws
        closing: set[asyncio.Task[bool]] = set()

        def close_on_refusal(cause: Disconnect) -> None:
            # The reader may be waiting for a frame: closing the socket ends that wait.
            task = asyncio.create_task(ws.close(code=protocol.CloseCode.NORMAL))
            closing.add(task)
            task.add_done_callback(closing.discard)

        intake = Intake(
            link.spool, self.config.websocket.max_in_flight, self.health, close_on_refusal
        )
        for kept in link.early:  # events that came before 'subscribed' go first, in order
            if not await intake.put(kept):
                break
        keepalive = asyncio.create_task(self._keepalive(link), name="websocket:keepalive")
        loop = asyncio.get_running_loop()
        link.heard = loop.time()
        watchdog = asyncio.create_task(self._watch_silence(link), name="websocket:watchdog")
        try:
            while not ws.closed and intake.refusal is None:
                msg = await self._read(link)
                link.heard = loop.time()
                if msg.type is WSMsgType.TEXT:
                    action = link.session.receive(msg.data, time.time())
                    if not isinstance(action, Deliver):
                        self._pass_over(action)
                        continue
                    if not await intake.put(action.event):
                        break  # the spool pushed back: stop reading, close, wait for room
                    if action.next_page is not None or action.replay_limit:
                        await self._next_page(link, action)  # after: a held page holds no event
                elif msg.type is WSMsgType.BINARY:
                    self._pass_over(link.session.binary(len(msg.data)))
                else:
                    break  # close, closing, closed or error
        finally:
            keepalive.cancel()
            watchdog.cancel()
            # Commit what was read before the close (on stop too): fewer events to replay.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT):
                    await intake.drain()
            await asyncio.gather(keepalive, watchdog, *closing, return_exceptions=True)
        # Events read but not committed are not lost: the cursor has not passed them, and the
        # reconnect replays from it. Without a cursor there is nothing to replay from.
        if intake.refusal is not None:
            if link.spool.cursor is None:
                self._possible_gap("refused_without_cursor", first_refused=intake.refused_id)
            raise Disconnected(intake.refusal)

    async def _next_page(self, link: _Link, delivered: Deliver) -> None:
        if delivered.replay_limit:
            self._possible_gap("replay_limit", limit=protocol.REPLAY_LIMIT)
        if delivered.next_page is not None:
            # Held here when the rate limit is near: the reader waits, as the server does.
            log.info("ws.replay_next_page", after=delivered.event.event_id)
            await self._send(link, delivered.next_page)

    async def _watch_silence(self, link: _Link) -> None:
        """Close a connection on which no frame came for ``stale_after`` seconds. receive()
        restarts its own timeout at every WebSocket pong, so a transport that answers pings
        would hide a silent server. One clock read per frame, not a timer around each read.
        While the pacer holds a message back (a replay page, a ping) the server may be waiting
        for it: that silence is the bridge's own, and counts from the end of the hold."""
        ws, stale = link.ws, self.config.websocket.stale_after
        loop = asyncio.get_running_loop()
        while not ws.closed:
            if link.pacer.holding:
                link.heard = loop.time()
            silent = loop.time() - link.heard
            if silent >= stale:
                log.warning("ws.stale", silent_for=stale)
                await ws.close(code=protocol.CloseCode.GOING_AWAY)
                return
            await asyncio.sleep(stale - silent)

    async def _keepalive(self, link: _Link) -> None:
        """The protocol's own ``ping`` (answered by a text ``pong``) keeps traffic flowing, which
        the silence watchdog relies on; aiohttp sends the WebSocket-level pings."""
        interval = self.config.websocket.ping_interval
        while not link.ws.closed:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._send(link, protocol.PING_FRAME)
