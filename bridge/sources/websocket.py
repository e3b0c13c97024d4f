"""WebSocket source: the OpenMail subscription, held open for months.

The loop: connect with the API key -> subscribe with the stored replay cursor -> receive, with
keepalive and a stale-connection watchdog -> on a close, classify it and sleep the next backoff
delay (tenacity, exponential with full jitter; at the cap for a rejected key or too many
connections, where OpenMail's own clients exit and a daemon must not). Events are committed in
small batches by a consumer task; the cursor moves only with a commit, so a reconnect replays
whatever was not stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import datetime

import aiohttp
import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from bridge import protocol
from bridge.config import OpenMailConfig
from bridge.errors import EventError, SpoolFullError, StoreError
from bridge.events import Event, Origin, event_from_object
from bridge.metrics import Metrics
from bridge.protocol import CloseClass, FrameKind
from bridge.sources import Spool
from bridge.store import Store
from bridge.throttle import Throttle

log = structlog.get_logger("bridge.sources.websocket")

MESSAGE_TOO_BIG = 1009
STOP_TIMEOUT = 10.0
"""How long ``stop()`` waits for the connection loop (and the commits it has in flight)."""
ERROR_FOLLOW_UP = 1.0
"""After an ``error`` frame during subscribe, how long to wait for a close that explains it."""


class Disconnected(Exception):
    """The connection ended; ``kind`` says how to reconnect."""

    def __init__(self, kind: CloseClass | str, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.kind, self.reason, self.code = kind, reason, code


SUBSCRIBE_REJECTED = "subscribe_rejected"
"""A configuration problem (an inbox the key does not own): retried at the cap, like a bad key."""
PUSHBACK = "pushback"
"""The store is full or failing: closed on purpose until it can take events again."""
STOPPING = "stopping"
AT_THE_CAP = frozenset(
    {CloseClass.KEY_REJECTED, CloseClass.TOO_MANY_CONNECTIONS, SUBSCRIBE_REJECTED}
)
"""Causes that retrying sooner cannot mend: retried at the backoff cap, logged as ERROR once."""
CLOSED = frozenset(
    {
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
        aiohttp.WSMsgType.ERROR,
    }
)
"""Message types that end a connection."""


class WebSocketSource:
    name = "websocket"

    def __init__(
        self,
        config: OpenMailConfig,
        store: Store,
        metrics: Metrics,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._session = session
        self._own_session = session is None
        self._task: asyncio.Task[None] | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._invalid_log = Throttle()
        self._stopping = asyncio.Event()
        self._reconnect_now = asyncio.Event()
        self._closing: asyncio.Future[bool] | None = None
        self._peer_close_code: int | None = None
        self._early: list[Event] = []
        self._pushback: BaseException | None = None
        self.state = "idle"
        self.since = time.time()
        self.down_reason: str | None = None
        self.down_kind: str | None = None
        self.attempts = 0
        self.last_event_at: float | None = None
        self.possible_gaps = 0
        self._room_needed = 0  # bytes of the event the spool refused last; see _store_ready

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, spool: Spool) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
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
        if self._own_session and self._session is not None:
            await self._session.close()
        self._set_state("stopped")

    def reconfigure(self, config: OpenMailConfig) -> None:
        """Use a new key or filters (SIGHUP): reconnect when they changed."""
        old = self.config
        self.config = config
        if (old.api_key, old.websocket.url, old.websocket.inbox_ids, old.websocket.event_types) != (
            config.api_key,
            config.websocket.url,
            config.websocket.inbox_ids,
            config.websocket.event_types,
        ):
            log.info("ws.reconfigured", reconnect=True)
            self._reconnect_now.set()
            ws = self._ws
            if ws is not None and not ws.closed:
                self._closing = asyncio.ensure_future(ws.close(code=protocol.CloseCode.NORMAL))

    @property
    def receiving(self) -> bool:
        return self.state == "subscribed"

    def status(self) -> dict[str, object]:
        return {
            "state": self.state,
            "since": self.since,
            "reason": self.down_reason,
            "cursor": self.store.cursor,
            "last_event_at": self.last_event_at,
            "reconnect_attempts": self.attempts,
            "possible_gaps": self.possible_gaps,
        }

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        self.metrics.ws_connected.set(1 if state == "subscribed" else 0)

    # --- reconnect loop --------------------------------------------------------------------

    def _wait(self, retry: RetryCallState) -> float:
        cfg = self.config.websocket.reconnect
        exc = retry.outcome.exception() if retry.outcome else None
        kind = exc.kind if isinstance(exc, Disconnected) else CloseClass.TRANSIENT
        if kind in AT_THE_CAP:
            # Retrying sooner cannot help; a little jitter keeps many bridges from moving in step.
            return cfg.max * random.uniform(0.8, 1.0)
        if kind is PUSHBACK:
            return 0.0  # the wait for room already happened
        delay = float(wait_random_exponential(multiplier=cfg.initial, max=cfg.max)(retry))
        if kind is CloseClass.RATE_LIMITED:
            delay = max(delay, min(cfg.max, cfg.initial * 8))
        return delay

    async def _sleep(self, seconds: float) -> None:
        self._reconnect_now.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                stop = asyncio.ensure_future(self._stopping.wait())
                now = asyncio.ensure_future(self._reconnect_now.wait())
                try:
                    await asyncio.wait([stop, now], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stop.cancel()
                    now.cancel()

    def _before_sleep(self, retry: RetryCallState) -> None:
        exc = retry.outcome.exception() if retry.outcome else None
        if not isinstance(exc, Disconnected):
            return
        delay = retry.next_action.sleep if retry.next_action else 0.0
        self.attempts += 1
        self.metrics.ws_reconnects.inc()
        changed = (exc.kind, exc.reason) != (self.down_kind, self.down_reason)
        was_up = self.state == "subscribed"
        self.down_kind, self.down_reason = str(exc.kind), exc.reason
        self._set_state("paused" if exc.kind is PUSHBACK else "down")
        fields = {"reason": exc.reason, "close_code": exc.code, "retry_in": round(delay, 3)}
        if exc.kind in AT_THE_CAP:
            if changed:
                log.error(
                    "ws.rejected",
                    cause=str(exc.kind),
                    **fields,
                    hint=_REJECTED_HINTS.get(str(exc.kind), ""),
                )
            else:
                log.warning("ws.retrying", cause=str(exc.kind), **fields)
        elif was_up or changed:
            log.warning("ws.disconnected", **fields)
        else:
            log.info("ws.retrying", **fields)

    async def _run(self, spool: Spool) -> None:
        while not self._stopping.is_set():
            retrying = AsyncRetrying(
                retry=retry_if_exception(_should_reconnect),
                wait=self._wait,
                sleep=self._sleep,
                before_sleep=self._before_sleep,
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        if self._stopping.is_set():
                            return
                        await self._connect_once(spool)
            except Disconnected:
                return  # only when stopping
            except Exception:
                # A bug must not end the subscription for the life of the daemon: log it loudly
                # and start over at the backoff cap.
                log.exception("ws.unexpected_error")
                self._set_state("down")
                await self._sleep(self.config.websocket.reconnect.max)
                continue
            # A connection that stayed up a while ended: a fresh backoff curve, a short pause.
            await self._sleep(random.uniform(0, self.config.websocket.reconnect.initial))

    def _store_ready(self) -> bool:
        # Room for the event the spool refused, not merely any room: reconnecting before it fits
        # would only replay it into another refusal, in a tight loop. (An event larger than the
        # whole bound never fits; then any room will do.)
        needed = self._room_needed if self._room_needed <= self.store.limits.max_bytes else 0
        return self.store.writable and self.store.has_room_for(needed)

    async def _wait_for_store(self) -> None:
        if self._store_ready():
            self._room_needed = 0
            return
        self._set_state("paused")
        log.warning("ws.paused", reason="the spool cannot take events; reconnecting when it can")
        while not self._stopping.is_set() and not self._store_ready():
            waiters = [
                asyncio.ensure_future(self.store.wait_room()),
                asyncio.ensure_future(self.store.wait_writable()),
                asyncio.ensure_future(self._stopping.wait()),
            ]
            try:
                await asyncio.wait(waiters, return_when=asyncio.ALL_COMPLETED, timeout=1.0)
            finally:
                for w in waiters:
                    w.cancel()
        self._room_needed = 0

    async def _connect_once(self, spool: Spool) -> None:
        """One connection, start to end. Returns only after a long-lived connection; else raises."""
        await self._wait_for_store()
        if self._stopping.is_set():
            raise Disconnected(STOPPING, "stopping")
        cfg = self.config.websocket
        assert self._session is not None
        key = self.config.api_key.get() if self.config.api_key else ""
        self._set_state("connecting")
        try:
            ws = await self._session.ws_connect(
                cfg.url,
                headers={"Authorization": f"Bearer {key}"},
                heartbeat=cfg.ping_interval,  # WebSocket pings, with aiohttp's pong deadline
                max_msg_size=self.config.webhook.max_body,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            kind = protocol.classify_handshake_status(exc.status)
            raise Disconnected(kind, f"upgrade refused with HTTP {exc.status}") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise Disconnected(CloseClass.TRANSIENT, f"cannot connect: {exc}") from None
        self._ws = ws
        self._peer_close_code = None
        self._pushback = None
        if self._stopping.is_set():  # stop() ran while we were connecting: it saw no socket
            await ws.close(code=protocol.CloseCode.NORMAL)
            self._ws = None
            raise Disconnected(STOPPING, "stopping")
        try:
            subscribed_at, cursor = await self._subscribe(ws)
            up_since = time.monotonic()
            await self._receive(ws, spool, subscribed_at, replaying=cursor is not None)
        except (aiohttp.ClientError, ConnectionError) as exc:
            # The socket failed under a send: the same as a dropped connection.
            raise Disconnected(CloseClass.TRANSIENT, f"connection failed: {exc}", 1006) from None
        finally:
            self._ws = None
            if not ws.closed:
                await ws.close()
        if time.monotonic() - up_since >= cfg.reconnect.reset_after and not self._stopping.is_set():
            self._set_state("down")
            self.down_kind, self.down_reason = None, None
            log.warning("ws.disconnected", reason="connection closed", close_code=ws.close_code)
            return
        if self._stopping.is_set():
            raise Disconnected(STOPPING, "stopping")
        raise self._closed(ws)

    def _note(self, msg: aiohttp.WSMessage) -> aiohttp.WSMessage:
        # aiohttp reports 1006 when the server drops TCP right after its close frame, even though
        # the frame said 4001 or 4029: the code in the frame is what classifies the close.
        if msg.type is aiohttp.WSMsgType.CLOSE and isinstance(msg.data, int):
            self._peer_close_code = msg.data
        return msg

    def _closed(self, ws: aiohttp.ClientWebSocketResponse) -> Disconnected:
        code = self._peer_close_code if self._peer_close_code is not None else ws.close_code
        kind = protocol.classify_close(code)
        reason = {
            CloseClass.KEY_REJECTED: "the API key was rejected",
            CloseClass.TOO_MANY_CONNECTIONS: "the account has too many WebSocket connections",
            CloseClass.RATE_LIMITED: "rate limited by OpenMail",
        }.get(kind, "connection closed")
        if code == MESSAGE_TOO_BIG:
            reason = (
                f"a frame was larger than openmail.webhook.max_body "
                f"({self.config.webhook.max_body} bytes), which also bounds WebSocket frames; "
                "raise it, or the same event is replayed and refused again"
            )
            log.error("ws.frame_too_large", max_body=self.config.webhook.max_body)
        if self._reconnect_now.is_set():
            reason = "reconnecting with the new configuration"
        return Disconnected(kind, reason, code if code is not None else 1006)

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[float, str | None]:
        """Send ``subscribe`` and wait for ``subscribed``; handles an unknown replay cursor.
        Returns when it was subscribed, and the cursor the subscription carries."""
        cfg = self.config.websocket
        cursor = self.store.cursor
        self._early = []
        await ws.send_str(protocol.subscribe_frame(cfg.inbox_ids, cfg.event_types, cursor))
        try:
            async with asyncio.timeout(cfg.subscribe_timeout):
                while True:
                    frame = await self._next_control(ws)
                    if frame.kind is FrameKind.SUBSCRIBED:
                        break
                    if frame.kind is FrameKind.EVENT:
                        # Kept for the queue: if OpenMail applied a subscribe it answered with
                        # an error, this is a live event that no replay would bring again.
                        self._keep_early(frame)
                    elif frame.kind is FrameKind.UNKNOWN:
                        self._invalid("unknown_type", f"type {frame.type_name!r}")
                    if frame.kind is not FrameKind.ERROR:
                        continue
                    # An error has no code: a close right after it says what it was.
                    follow = await self._follow_up(ws)
                    if follow is not None:
                        raise follow
                    message = frame.message
                    # Inbox first: "inbox ... is not owned by this API key" also names the key.
                    if protocol.error_is_unowned_inbox(message):
                        raise Disconnected(
                            SUBSCRIBE_REJECTED,
                            (
                                "OpenMail refused the subscription for "
                                f"openmail.websocket.inbox_ids {list(cfg.inbox_ids)}: {message}"
                            ),
                        )
                    if _looks_like_auth(message):
                        raise Disconnected(CloseClass.KEY_REJECTED, f"OpenMail said: {message}")
                    if cursor is not None:
                        await self._reset_cursor(cursor, message)
                        cursor = None
                        await ws.send_str(protocol.subscribe_frame(cfg.inbox_ids, cfg.event_types))
                        continue
                    raise Disconnected(CloseClass.TRANSIENT, f"subscribe failed: {message}")
        except TimeoutError:
            raise Disconnected(
                CloseClass.TRANSIENT, f"no 'subscribed' within {cfg.subscribe_timeout:g}s"
            ) from None
        subscribed_at = time.time()
        was = (self.down_kind, self.down_reason)
        self._set_state("subscribed")
        self.down_kind = self.down_reason = None
        log.info("ws.connected", url=cfg.url, cursor=cursor, recovered=was != (None, None) or None)
        return subscribed_at, cursor

    def _keep_early(self, frame: protocol.ServerFrame) -> None:
        try:
            self._early.append(event_from_object(frame.data, frame.raw, Origin.WEBSOCKET))
        except EventError as exc:
            self._invalid("bad_event", str(exc))

    async def _reset_cursor(self, cursor: str, message: str) -> None:
        self.possible_gaps += 1
        self.metrics.possible_gaps.labels("cursor_reset").inc()
        log.warning(
            "ws.cursor_reset",
            cursor=cursor,
            error=message,
            hint="OpenMail does not know the replay cursor; events since it may be missed "
            "unless they came by webhook",
        )
        with contextlib.suppress(StoreError):
            await self.store.clear_cursor()

    async def _follow_up(self, ws: aiohttp.ClientWebSocketResponse) -> Disconnected | None:
        with contextlib.suppress(TimeoutError):
            msg = self._note(await ws.receive(timeout=ERROR_FOLLOW_UP))
            if msg.type in CLOSED:
                return self._closed(ws)
            if msg.type is aiohttp.WSMsgType.TEXT:
                with contextlib.suppress(protocol.ProtocolError):
                    frame = protocol.parse_server_frame(msg.data)
                    if frame.kind is FrameKind.EVENT:
                        self._keep_early(frame)
        return None

    async def _next_control(self, ws: aiohttp.ClientWebSocketResponse) -> protocol.ServerFrame:
        while True:
            msg = self._note(await ws.receive())
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    return protocol.parse_server_frame(msg.data)
                except protocol.ProtocolError as exc:
                    self._invalid("not_json", str(exc))
                    continue
            if msg.type is aiohttp.WSMsgType.BINARY:
                self._invalid("binary", f"{len(msg.data)} bytes")
                continue
            if msg.type in CLOSED:
                raise self._closed(ws)

    def _invalid(self, reason: str, detail: str) -> None:
        # The server chooses how often this runs: a hostile or broken one must not flood the
        # journal. Every frame is counted; one line per minute says how many were not logged.
        self.metrics.ws_frames_invalid.labels(reason).inc()
        if (suppressed := self._invalid_log.admit()) is not None:
            extra = {"ignored_since_last_line": suppressed} if suppressed else {}
            log.warning("ws.frame_ignored", reason=reason, detail=detail[:200], **extra)

    # --- receiving -------------------------------------------------------------------------

    async def _receive(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        spool: Spool,
        subscribed_at: float,
        *,
        replaying: bool,
    ) -> None:
        cfg = self.config.websocket
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=cfg.max_in_flight)
        consumer = asyncio.create_task(self._consume(queue, spool, ws), name="websocket:commit")
        early, self._early = self._early, []
        for kept in early:  # events that came before 'subscribed' go first, in order
            await self._hand_over(queue, kept, consumer)
        keepalive = asyncio.create_task(self._keepalive(ws), name="websocket:keepalive")
        replayed = 0
        try:
            while not ws.closed:
                try:
                    # An outer deadline: receive() restarts its own timeout at every WebSocket
                    # pong, so a transport that answers pings would hide a silent server.
                    async with asyncio.timeout(cfg.stale_after):
                        msg = self._note(await ws.receive())
                except TimeoutError:
                    log.warning("ws.stale", silent_for=cfg.stale_after)
                    await ws.close(code=protocol.CloseCode.GOING_AWAY)
                    break
                if msg.type is aiohttp.WSMsgType.TEXT:
                    event = self._event_from(msg.data)
                    if event is None:
                        continue
                    # Only a subscription that carried a cursor replays anything.
                    if replaying and _occurred_before(event, subscribed_at):
                        replayed += 1
                        if replayed % protocol.REPLAY_LIMIT == 0:
                            if replayed == protocol.REPLAY_LIMIT:
                                self._replay_limit()
                            await self._next_replay_page(ws, event.event_id)
                    if not await self._hand_over(queue, event, consumer):
                        break  # the store pushed back: stop reading, close, wait for room
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    self._invalid("binary", f"{len(msg.data)} bytes")
                else:
                    break  # close, closing, closed or error
        finally:
            keepalive.cancel()
            if not consumer.done():
                # Commit what was read before the close (on stop too): fewer events to replay.
                drained = asyncio.ensure_future(queue.join())
                await asyncio.wait(
                    [drained, consumer], timeout=10.0, return_when=asyncio.FIRST_COMPLETED
                )
                drained.cancel()
            consumer.cancel()
            await asyncio.gather(consumer, keepalive, return_exceptions=True)
        # Events read but not committed are not lost: the cursor has not passed them.
        if self._pushback is not None:
            failure, self._pushback = self._pushback, None
            raise Disconnected(PUSHBACK, f"the spool pushed back: {failure}")

    @staticmethod
    async def _hand_over(
        queue: asyncio.Queue[Event], event: Event, consumer: asyncio.Task[None]
    ) -> bool:
        """Queue ``event`` for the consumer; False once the consumer has stopped (a pushback),
        also while waiting for room: a full queue would otherwise wait for it forever."""
        if consumer.done():
            return False
        if not queue.full():
            queue.put_nowait(event)
            return True
        put = asyncio.ensure_future(queue.put(event))
        await asyncio.wait([put, consumer], return_when=asyncio.FIRST_COMPLETED)
        if put.done():
            return True
        put.cancel()
        return False

    def _event_from(self, data: str) -> Event | None:
        try:
            frame = protocol.parse_server_frame(data)
        except protocol.ProtocolError as exc:
            self._invalid("not_json", str(exc))
            return None
        if frame.kind is FrameKind.EVENT:
            try:
                return event_from_object(frame.data, frame.raw, Origin.WEBSOCKET)
            except EventError as exc:
                self._invalid("bad_event", str(exc))
                return None
        if frame.kind is FrameKind.ERROR:
            log.warning("ws.server_error", message=frame.message)
        elif frame.kind is FrameKind.UNKNOWN:
            self._invalid("unknown_type", f"type {frame.type_name!r}")
        return None

    def _replay_limit(self) -> None:
        self.possible_gaps += 1
        self.metrics.possible_gaps.labels("replay_limit").inc()
        log.warning(
            "ws.replay_limit",
            limit=protocol.REPLAY_LIMIT,
            hint="the replay hit OpenMail's maximum; the bridge asks for the next page, and if "
            "OpenMail does not replay it, events may have been missed on this path unless they "
            "came by webhook",
        )

    async def _next_replay_page(self, ws: aiohttp.ClientWebSocketResponse, after: str) -> None:
        """Ask for the events after the last replayed one (ASSUMPTION_SUBSCRIBE_REPLAYS_AGAIN):
        subscribes accumulate, so repeating ours with a new cursor changes no filter."""
        cfg = self.config.websocket
        log.info("ws.replay_next_page", after=after)
        await ws.send_str(protocol.subscribe_frame(cfg.inbox_ids, cfg.event_types, after))

    async def _consume(
        self, queue: asyncio.Queue[Event], spool: Spool, ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        """Commit queued events in batches submitted in one tick, so they share a transaction.
        On the first refusal the connection closes; the store never moves the cursor past a
        refused event, so the reconnect replays it and whatever followed."""
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            results: list[object]
            try:
                results = list(await spool.accept(batch))
            except Exception as exc:  # the write failed: nothing of the batch was stored
                results = [exc] * len(batch)
            for _ in batch:
                queue.task_done()
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                if isinstance(failure, SpoolFullError):
                    self._room_needed = len(batch[results.index(failure)].raw)
                if not isinstance(failure, SpoolFullError | StoreError):
                    log.error("ws.accept_failed", error=str(failure))
                log.warning(
                    "ws.pushback",
                    error=str(failure),
                    hint="closing the WebSocket until the spool can take events",
                )
                # Noted before the close: the reader may cancel this task while it closes.
                self._pushback = failure
                await ws.close(code=protocol.CloseCode.NORMAL)
                raise failure
            self.last_event_at = time.time()

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """The protocol's own ``ping`` (answered by a text ``pong``) keeps traffic flowing, which
        the stale watchdog in ``_receive`` relies on; aiohttp sends the WebSocket-level pings."""
        interval = self.config.websocket.ping_interval
        while not ws.closed:
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(protocol.PING_FRAME)


_REJECTED_HINTS = {
    str(CloseClass.KEY_REJECTED): "check openmail.api_key; the bridge keeps retrying at the "
    "backoff cap and receives by webhook meanwhile",
    str(CloseClass.TOO_MANY_CONNECTIONS): "the account holds 10 WebSocket connections already; "
    "close other clients",
    SUBSCRIBE_REJECTED: "remove inbox ids this API key does not own from "
    "openmail.websocket.inbox_ids",
}


def _should_reconnect(exc: BaseException) -> bool:
    return isinstance(exc, Disconnected) and exc.kind != STOPPING


def _looks_like_auth(message: str) -> bool:
    lowered = message.lower()
    return any(
        w in lowered for w in ("unauthori", "api key", "invalid key", "revoked", "forbidden")
    )


def _occurred_before(event: Event, moment: float) -> bool:
    """ASSUMPTION (protocol.ASSUMPTION_REPLAY_AFTER_SUBSCRIBED): a replayed event occurred before
    we subscribed; live events after. Used only to warn when a replay hits its limit."""
    marker = b'"occurred_at":"'
    start = event.raw.find(marker)
    if start < 0:
        return False
    start += len(marker)
    text = event.raw[start : start + 40].split(b'"', 1)[0].decode(errors="replace")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() < moment - 0.5
    except ValueError:
        return False
