"""One simulated WebSocket connection: its filters, the client-message protocol (§2-§4), an ordered
outgoing queue, the per-connection rate limit and the server's protocol-level keepalive (§5).

Everything that decides *what* a client receives runs synchronously (no ``await``): frames are put
on the connection's queue at the moment of the decision and one writer task sends them in order.
That is what guarantees ``subscribed`` → replay → live events, even while events are injected
concurrently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import structlog
from aiohttp import web

from bridge import protocol
from bridge.simulator.records import DeliveryRecord, encode, stamp

log = structlog.get_logger(__name__)

AuthForm = Literal["header", "query"]
CLOSE_MESSAGES: Final[dict[int, str]] = {
    protocol.CloseCode.UNAUTHORIZED: "unauthorized: invalid API key",
    protocol.CloseCode.FORBIDDEN: "forbidden",
    protocol.CloseCode.TOO_MANY_CONNECTIONS: "connection limit exceeded",
    protocol.CloseCode.RATE_LIMITED: "rate limit exceeded",
}
"""The ``error`` frame the simulator sends before closing with one of these codes."""


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A snapshot of one open connection (``Simulator.connections``, ``GET /_sim/state``)."""

    id: int
    subscribed: bool
    inbox_ids: tuple[str, ...]
    event_types: tuple[str, ...]
    auth: AuthForm
    connected_at: float
    messages: int

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "subscribed": self.subscribed,
            "inbox_ids": list(self.inbox_ids),
            "event_types": list(self.event_types),
            "auth": self.auth,
            "connected_at": self.connected_at,
            "messages": self.messages,
        }


@dataclass(frozen=True, slots=True)
class _Close:
    code: int


def error_frame(message: str) -> str:
    return encode({"type": "error", "message": message})


def _string_list(data: dict[str, object], key: str) -> list[str] | None:
    """The list under ``key``; ``[]`` when absent or null. None when it is not a list of strings."""
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item for item in value if isinstance(item, str)]
    return None


class Connection:
    """State and protocol of one accepted, authenticated connection.

    Filters are two independent sets (ASSUMPTION 8): each ``subscribe`` adds to them, an empty set
    means "all". Unsubscribing the last listed inbox ends the subscription (rather than widening
    an empty set to "all"); unsubscribing one inbox while on "all inboxes" is undefined upstream and
    is ignored here.
    """

    def __init__(
        self,
        conn_id: int,
        ws: web.WebSocketResponse,
        request: web.BaseRequest,
        *,
        auth: AuthForm,
        record: Callable[[DeliveryRecord], None],
        clock: Callable[[], float],
    ) -> None:
        self.id = conn_id
        self.ws = ws
        self._request = request
        self.auth: AuthForm = auth
        self._record = record
        self._clock = clock
        self.subscribed = False
        self.inbox_ids: set[str] = set()
        self.event_types: set[str] = set()
        self.closing = False
        self.connected_at = time.time()
        self.messages = 0
        self.done = asyncio.Event()
        self.pong = asyncio.Event()
        self._recent: deque[float] = deque()
        self._queue: asyncio.Queue[tuple[str | _Close, asyncio.Future[bool]]] = asyncio.Queue()
        self.close_code: int | None = None
        self.drained = asyncio.Event()
        """Set when the writer stops: at a queued close (``close_code`` set) or a failed write."""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, ping_interval: float, pong_timeout: float) -> None:
        """Start the writer and the keepalive."""
        self._tasks = [
            asyncio.create_task(self._run_writer()),
            asyncio.create_task(self._run_keepalive(ping_interval, pong_timeout)),
        ]

    async def finish(self) -> None:
        """Stop the writer and the keepalive once the connection is over."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            id=self.id,
            subscribed=self.subscribed,
            inbox_ids=tuple(sorted(self.inbox_ids)),
            event_types=tuple(sorted(self.event_types)),
            auth=self.auth,
            connected_at=self.connected_at,
            messages=self.messages,
        )

    # --- Sending (synchronous enqueue, one writer task) -------------------------------------------

    def send(self, frame: str) -> None:
        """Queue a text frame (fire and forget)."""
        _ = self._enqueue(frame)

    def _enqueue(self, frame: str) -> asyncio.Future[bool]:
        """Queue a text frame; the future says whether it was written."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self.closing:
            future.set_result(False)
        else:
            self._queue.put_nowait((frame, future))
        return future

    def send_event(self, event: dict[str, object], *, replay: bool = False) -> asyncio.Future[bool]:
        """Queue an event frame and record the WebSocket delivery once it is written (or not)."""
        event_id = str(event.get("event_id"))
        future = self._enqueue(encode(stamp(event, 1)))

        def done(fut: asyncio.Future[bool]) -> None:
            sent = not fut.cancelled() and fut.result()
            self._record(
                DeliveryRecord(
                    event_id=event_id,
                    channel="websocket",
                    attempt=1,
                    error=None if sent else "connection closed before the frame was sent",
                    connection_id=self.id,
                    replay=replay,
                )
            )

        future.add_done_callback(done)
        return future

    def close(self, code: int, message: str | None = None) -> None:
        """Queue an optional ``error`` frame and the close; frames already queued go out first.

        The writer only marks the close (``drained``); the task that reads the connection performs
        the closing handshake, because aiohttp's ``close()`` skips waiting for the peer's close
        frame when another task is inside ``receive()``, and a peer whose reply then fails (such as
        aiohttp's client) reports 1006 instead of our code.
        """
        if self.closing:
            return
        if message is not None:
            self.send(error_frame(message))
        self.closing = True
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((_Close(code), future))

    def abort(self) -> None:
        """Cut the TCP connection without a close frame; the peer sees 1006."""
        self.closing = True
        transport = self._request.transport
        if transport is not None:
            transport.abort()

    async def _run_writer(self) -> None:
        try:
            while True:
                item, future = await self._queue.get()
                try:
                    if isinstance(item, _Close):
                        self.close_code = item.code
                        future.set_result(True)
                        return
                    await self.ws.send_str(item)
                    future.set_result(True)
                except (ConnectionError, RuntimeError):
                    # The peer went away while we were writing; everything queued is lost.
                    return
                finally:
                    if not future.done():  # failed or cancelled mid-write
                        future.set_result(False)
        finally:
            self.closing = True
            self.drained.set()
            while not self._queue.empty():
                _, future = self._queue.get_nowait()
                if not future.done():
                    future.set_result(False)

    # --- Keepalive (protocol-level ping/pong, §5) -----------------------------------------------

    async def _run_keepalive(self, interval: float, pong_timeout: float) -> None:
        """Ping every ``interval``; a peer that does not pong within ``pong_timeout`` is cut off."""
        while True:
            await asyncio.sleep(interval)
            self.pong.clear()
            try:
                await self.ws.ping()
            except (ConnectionError, RuntimeError):
                return
            try:
                async with asyncio.timeout(pong_timeout):
                    await self.pong.wait()
            except TimeoutError:
                log.info("sim.ws.pong_timeout", connection_id=self.id, timeout=pong_timeout)
                self.abort()
                return

    # --- Client messages (§2) ---------------------------------------------------------------------

    def over_rate_limit(self, limit: int, window: float) -> bool:
        """Count one client message; True once more than ``limit`` arrived within ``window`` s."""
        now = self._clock()
        self.messages += 1
        self._recent.append(now)
        while self._recent and self._recent[0] <= now - window:
            self._recent.popleft()
        return len(self._recent) > limit

    def handle_text(
        self, text: str, *, owned: frozenset[str], history: Sequence[dict[str, object]]
    ) -> None:
        """Answer one client text frame (errors never close the connection)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            self.send(error_frame("invalid JSON"))
            return
        if not isinstance(data, dict):
            self.send(error_frame("invalid message: expected a JSON object"))
            return
        kind = data.get("type")
        if kind == "subscribe":
            self._subscribe(data, owned, history)
        elif kind == "unsubscribe":
            self._unsubscribe(data)
        elif kind == "ping":
            self.send(protocol.PONG_FRAME)
        elif isinstance(kind, str):
            # Includes the old docs' ``ack`` (ASSUMPTION 12: the server may answer it with error).
            self.send(error_frame(f"unknown message type: {kind}"))
        else:
            self.send(error_frame("invalid message: missing 'type'"))

    def _subscribe(
        self, data: dict[str, object], owned: frozenset[str], history: Sequence[dict[str, object]]
    ) -> None:
        inbox_ids = _string_list(data, "inbox_ids")
        event_types = _string_list(data, "event_types")
        cursor = data.get("last_event_id")
        if inbox_ids is None or event_types is None:
            self.send(error_frame("invalid subscribe: inbox_ids and event_types are string lists"))
            return
        if cursor is not None and not isinstance(cursor, str):
            self.send(error_frame("invalid subscribe: last_event_id must be a string"))
            return
        for inbox in inbox_ids:
            if inbox not in owned:
                # ASSUMPTION 9: one unowned inbox rejects the whole subscribe.
                self.send(error_frame(f"inbox {inbox} is not owned by this API key"))
                return
        start = 0
        if cursor:
            found = _index_of(history, cursor)
            if found is None:
                # ASSUMPTION 6: the subscribe is not applied and no ``subscribed`` follows.
                self.send(error_frame(f"unknown last_event_id: {cursor}"))
                return
            start = found + 1
        self.subscribed = True
        self.inbox_ids.update(inbox_ids)
        self.event_types.update(event_types)
        info = self.info()
        self.send(
            encode(
                {
                    "type": "subscribed",
                    "inbox_ids": list(info.inbox_ids),
                    "event_types": list(info.event_types),
                }
            )
        )
        if cursor:
            replay = [event for event in history[start:] if self.wants(event)]
            for event in replay[: protocol.REPLAY_LIMIT]:
                _ = self.send_event(event, replay=True)  # recorded when written

    def _unsubscribe(self, data: dict[str, object]) -> None:
        inbox_ids = _string_list(data, "inbox_ids")
        if inbox_ids is None:
            self.send(error_frame("invalid unsubscribe: inbox_ids must be a list of strings"))
            return
        if "inbox_ids" not in data or data["inbox_ids"] is None:
            self._reset()
        elif self.inbox_ids:
            self.inbox_ids.difference_update(inbox_ids)
            if not self.inbox_ids:
                self._reset()
        reply: dict[str, object] = {"type": "unsubscribed", "inbox_ids": inbox_ids}
        self.send(encode(reply))

    def _reset(self) -> None:
        self.subscribed = False
        self.inbox_ids.clear()
        self.event_types.clear()

    def wants(self, event: dict[str, object]) -> bool:
        """True when this connection is subscribed and both filter sets match (ASSUMPTION 8, 11)."""
        if not self.subscribed or self.closing:
            return False
        # Injected payloads may hold anything; only strings can match a filter.
        kind, inbox = event.get("event"), event.get("inbox_id")
        kind = kind if isinstance(kind, str) else ""
        if kind in protocol.LIFECYCLE_EVENT_TYPES:
            return False
        if self.inbox_ids and not (isinstance(inbox, str) and inbox in self.inbox_ids):
            return False
        return not self.event_types or kind in self.event_types


def _index_of(history: Sequence[dict[str, object]], event_id: str) -> int | None:
    """Index of the latest event with ``event_id`` (ids may repeat when tests inject duplicates)."""
    for index in range(len(history) - 1, -1, -1):
        if history[index].get("event_id") == event_id:
            return index
    return None
