"""The :class:`Simulator`: its aiohttp server's lifecycle, the event history, routing of each
event (§8: WebSocket fan-out, else webhook, else failed) and the knobs tests turn.

The ``/v1/ws`` endpoint is in ``endpoint``, webhook sending in ``webhooks``, attachment fetches in
``downloads``, delivery records in ``records``, mail content in ``mail`` and ``attachments``, the
``/_sim`` HTTP API in ``control``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, Literal, Self

import structlog
from aiohttp import web

from bridge import protocol
from bridge.simulator import control
from bridge.simulator.attachments import AttachmentSpec, ServedAttachment, make_attachments
from bridge.simulator.connection import ConnectionInfo
from bridge.simulator.downloads import AttachmentServer, FetchBehaviour, FetchMode
from bridge.simulator.endpoint import REJECT_SILENCE, Limits, WebSocketEndpoint
from bridge.simulator.keys import AccountKey
from bridge.simulator.mail import MailFactory, iso_now, new_id
from bridge.simulator.records import AttachmentRequest, DeliveryRecord, Rejection
from bridge.simulator.webhooks import WebhookSender, WebhookTargets

log = structlog.get_logger(__name__)

DEMO_API_KEY: Final = "om_test_demo_0000000000000000"
STOP_GRACE: Final = 2.0
"""``stop()`` waits this long for peers to answer the 1001 close before cutting them off."""
SEND_WAIT: Final = 5.0
"""``inject()`` waits at most this long for WebSocket frames to be written to slow clients."""


class Simulator:
    """A local stand-in for OpenMail's event delivery, written to the protocol reference.

    Use it as ``async with Simulator(...) as sim:``; it listens on ``127.0.0.1`` and a free port
    unless :meth:`start` is called with others. Constructor arguments mirror OpenMail's limits
    (``bridge.protocol``) so tests can shrink them; ``auth_failure`` picks the documented form of a
    rejected key or a connection over the limit (ASSUMPTION 5): ``"close"`` (default) accepts the
    upgrade and closes with 4001 / 4008 after the client's first frame, or after
    ``reject_silence`` seconds without one (0: at once, as a server that does not wait would);
    ``"http"`` (the CLI's ``--reject-on-upgrade``) answers the upgrade with HTTP 401 / 429.
    ``seed`` makes generated mail content reproducible; ``clock`` (monotonic seconds) times refusal
    windows and the rate limit, so tests can move it.

    Raises:
        ValueError: an inconsistent argument (webhook without secret, non-positive limit, ...).
    """

    # More than ~10 constructor arguments: each one is a documented server limit or timer that tests
    # must be able to shrink, and grouping them would only hide the protocol constants they mirror.
    def __init__(
        self,
        *,
        api_key: str = DEMO_API_KEY,
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        inboxes: Sequence[str] = ("inb_demo_support", "inb_demo_sales"),
        retry_delays: Sequence[float] = protocol.WEBHOOK_RETRY_DELAYS,
        retry_scale: float = 1.0,
        webhook_timeout: float = protocol.WEBHOOK_TIMEOUT,
        ping_interval: float = protocol.SERVER_PING_INTERVAL,
        pong_timeout: float = protocol.SERVER_PONG_TIMEOUT,
        rate_limit: tuple[int, float] = (protocol.RATE_LIMIT_MESSAGES, protocol.RATE_LIMIT_WINDOW),
        max_connections: int = protocol.MAX_CONNECTIONS,
        auth_failure: Literal["close", "http"] = "close",
        reject_silence: float = REJECT_SILENCE,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not inboxes or any(not inbox.startswith("inb_") for inbox in inboxes):
            raise ValueError("inboxes must be a non-empty list of 'inb_...' ids")
        self.inboxes: tuple[str, ...] = tuple(inboxes)
        self._owned = frozenset(self.inboxes)
        self.deliveries: list[DeliveryRecord] = []
        self.events: list[dict[str, object]] = []
        self._changed = asyncio.Event()
        limits = Limits(
            ping_interval=ping_interval,
            pong_timeout=pong_timeout,
            rate_limit=rate_limit,
            max_connections=max_connections,
            auth_failure=auth_failure,
            reject_silence=reject_silence,
        )
        key = AccountKey(api_key)
        self._endpoint = WebSocketEndpoint(
            key=key,
            owned=self._owned,
            history=self.events,
            limits=limits,
            record=self._record,
            notify=self._notify,
            clock=clock,
        )
        self._mail = MailFactory(self.inboxes, seed)
        self._files = AttachmentServer(key=key, notify=self._notify)
        self.lifecycle_event = self._mail.lifecycle_event
        """A lifecycle payload (webhook-only), as :meth:`MailFactory.lifecycle_event` makes it."""
        self._webhooks = WebhookTargets(self._owned)
        if webhook_secret is not None and webhook_url is None:
            raise ValueError("webhook_secret given without webhook_url")
        if webhook_url is not None:
            self.set_webhook(webhook_url, webhook_secret)
        self._sender = WebhookSender(
            resolve=self._webhooks.resolve,
            record=self._record,
            retry_delays=retry_delays,
            retry_scale=retry_scale,
            timeout=webhook_timeout,
        )
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.base_url = ""
        self.ws_url = ""

    # --- Lifecycle --------------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """Listen on ``host:port`` (0 = a free port); sets ``port``, ``base_url`` and ``ws_url``.

        With ``ssl_context`` everything is served over TLS (``https://`` / ``wss://``), for
        clients that only follow redirects to https.
        """
        if self._runner is not None:
            raise RuntimeError("the simulator is already started")
        app = web.Application()
        app.router.add_get(protocol.WS_PATH, self._endpoint.handle)
        self._files.add_routes(app)
        control.add_routes(app, self)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        await self._sender.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        url_host = f"[{host}]" if ":" in host else host
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://{url_host}:{self.port}"
        self.ws_url = protocol.ws_url_from_base(self.base_url)
        self._files.base_url = self.base_url
        log.info("sim.started", ws_url=self.ws_url, inboxes=list(self.inboxes))

    async def stop(self) -> None:
        """Close WebSocket connections (1001), cancel pending webhook retries, stop the server."""
        if self._runner is None:
            return
        await self.disconnect(protocol.CloseCode.GOING_AWAY)
        with contextlib.suppress(TimeoutError):
            await self.wait_for(lambda: not self._endpoint.connections, STOP_GRACE)
        await self.disconnect(abrupt=True)  # peers that did not answer the close frame
        self._files.release()
        await self._sender.close()
        await self._runner.cleanup()
        self._runner = None
        log.info("sim.stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- Inspection -------------------------------------------------------------------------------

    @property
    def connections(self) -> list[ConnectionInfo]:
        """Snapshots of the open connections, oldest first (``len()`` is the connection count)."""
        return self._endpoint.infos()

    @property
    def pending_webhooks(self) -> int:
        return self._sender.pending

    def webhook_config(self) -> dict[str, object]:
        """The webhook configuration without secrets."""
        return self._webhooks.to_json()

    @property
    def refusing(self) -> bool:
        return self._endpoint.refusing

    @property
    def pending_rejections(self) -> int:
        """Connections that will be rejected once they send a frame or stay silent too long."""
        return self._endpoint.pending_rejections

    @property
    def rejections(self) -> Sequence[Rejection]:
        """Every WebSocket connection turned away (a bad key, over the limit), oldest first."""
        return self._endpoint.rejections

    @property
    def attachment_requests(self) -> Sequence[AttachmentRequest]:
        """Every request for attachment bytes (API and signed paths), oldest first."""
        return self._files.requests

    @property
    def attachment_fetch(self) -> FetchBehaviour:
        """How attachment fetches are answered now."""
        return self._files.behaviour

    def attachment(self, message_id: str, filename: str) -> ServedAttachment | None:
        """A served attachment: ``.content()`` are its bytes, ``.sha256()`` their digest."""
        return self._files.get(message_id, filename)

    def attachments_of(self, message_id: str) -> list[ServedAttachment]:
        return self._files.of(message_id)

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 - a test helper shaped like asyncio.wait_for
    ) -> None:
        """Wait until ``predicate()`` holds, re-checked whenever a delivery or connection changes.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        # Wake every waiter once, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    def _record(self, record: DeliveryRecord) -> None:
        self.deliveries.append(record)
        self._notify()

    # --- Events -----------------------------------------------------------------------------------

    def message_event(
        self,
        *,
        inbox_id: str | None = None,
        thread_id: str | None = None,
        attachments: int | Sequence[AttachmentSpec] | None = None,
        **overrides: object,
    ) -> dict[str, object]:
        """A realistic ``message.received`` payload (§6).

        ``overrides`` replace top-level fields; a ``message`` dict is merged into the message (so
        ``message={"verdict": "spam", "auto_replyable": False}`` adds OpenMail's classification).
        A ``thread_id`` this simulator generated produces a reply in that thread. ``attachments``
        (a count, or one :class:`AttachmentSpec` each) replaces the message's attachments with
        ones this simulator serves at ``/v1/attachments/...``; without it the message is exactly
        what it would have been.

        Raises:
            ValueError: unusable attachment specs.
            RuntimeError: attachments asked of a simulator that is not started (their URLs name
                its address).
        """
        event = self._mail.message_event(inbox_id=inbox_id, thread_id=thread_id, **overrides)
        if attachments is None:
            return event
        if not self.base_url:
            raise RuntimeError("start the simulator first: attachment URLs name its address")
        if isinstance(attachments, int) and attachments < 0:
            raise ValueError("attachments: a count must not be negative")
        specs = [AttachmentSpec()] * attachments if isinstance(attachments, int) else attachments
        message = event["message"]
        assert isinstance(message, dict)  # the factory always makes one
        served = make_attachments(str(message["id"]), specs, self.base_url)
        message["attachments"] = [att.to_json() for att in served]
        self._files.add(served)
        return event

    async def inject(
        self,
        payload: dict[str, object] | None = None,
        *,
        inbox_id: str | None = None,
        thread_id: str | None = None,
        attachments: int | Sequence[AttachmentSpec] | None = None,
        **overrides: object,
    ) -> str:
        """Make an event happen now: append it to the history and route it (§8).

        With no ``payload``, one is generated by :meth:`message_event` from the keyword arguments;
        a payload without ``event_id``/``occurred_at`` gets them. Returns the ``event_id`` once the
        WebSocket frames are written (fan-out to every matching connection); a webhook delivery
        continues in the background; with neither route the event is recorded as ``failed``.

        Raises:
            ValueError: the payload is not JSON-serialisable.
            TypeError: both a payload and ``message_event()`` arguments were given.
            RuntimeError: the simulator is not started.
        """
        if self._runner is None:
            raise RuntimeError("the simulator is not started")
        if payload is None:
            payload = self.message_event(
                inbox_id=inbox_id, thread_id=thread_id, attachments=attachments, **overrides
            )
        elif inbox_id is not None or thread_id is not None or attachments is not None or overrides:
            raise TypeError("pass either a payload or message_event() arguments, not both")
        event = dict(payload)
        event.setdefault("event_id", new_id("evt"))
        event.setdefault("occurred_at", iso_now())
        try:
            json.dumps(event)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"event is not JSON-serialisable: {exc}") from None
        event_id = str(event["event_id"])
        # From here to the end of routing nothing awaits, so a concurrent subscribe either sees this
        # event in the history (replay) or is already a live target; never both, never neither.
        self.events.append(event)
        targets = [conn for conn in self._endpoint.connections.values() if conn.wants(event)]
        futures = [conn.send_event(event) for conn in targets]
        log.info(
            "sim.event.injected",
            event_id=event_id,
            event_type=event.get("event"),
            inbox_id=event.get("inbox_id"),
            websocket=len(targets),
        )
        if not targets:
            inbox = event.get("inbox_id")
            if self._webhooks.resolve(inbox if isinstance(inbox, str) else None) is not None:
                self._sender.submit(event)
            else:
                reason = "no subscribed WebSocket connection and no webhook configured"
                self._record(
                    DeliveryRecord(event_id=event_id, channel="failed", attempt=0, error=reason)
                )
        self._notify()
        if futures:
            await asyncio.wait(futures, timeout=SEND_WAIT)
        return event_id

    # --- Knobs ------------------------------------------------------------------------------------

    async def disconnect(self, code: int = 1001, *, abrupt: bool = False) -> int:
        """Close every WebSocket connection with ``code``, or with ``abrupt`` cut TCP (1006).

        Returns how many were open, once each connection's earlier frames are written and its
        close is under way (the closing handshakes finish in the background: ``wait_for`` on
        ``connections`` if that matters) or, with ``abrupt``, once the connections are gone.
        """
        return await self._endpoint.disconnect(code, abrupt=abrupt)

    def refuse(
        self, seconds: float, *, mode: Literal["close", "http"] = "close", code: int | None = None
    ) -> None:
        """Refuse new WebSocket connections for ``seconds`` (0 ends a refusal). Open ones stay.

        ``mode="close"`` accepts the upgrade then closes with ``code`` (default 1001; 4001, 4003,
        4008 and 4029 are preceded by their ``error`` frame); ``mode="http"`` answers the upgrade
        with HTTP status ``code`` (default 503).

        Raises:
            ValueError: an unknown mode, a code that does not fit it, or negative seconds.
        """
        self._endpoint.refuse(seconds, mode, code)

    def set_webhook(
        self, url: str | None, secret: str | None, *, inbox_id: str | None = None
    ) -> None:
        """Set (or with ``url=None`` remove) the account webhook or an inbox's own webhook.

        An inbox webhook overrides the account's for that inbox and has its own secret. Changes
        apply from the next attempt, retries included (a rotated secret is used at once).

        Raises:
            ValueError: an inbox the simulator does not own, a non-http(s) URL, or no secret.
        """
        self._webhooks.set(url, secret, inbox_id)

    def rotate_api_key(self, new_key: str, *, close_existing: bool = True) -> None:
        """Replace the API key; connections opened with the old key get an error and 4001 (§5),
        attachment fetches with it a 401."""
        self._endpoint.rotate_key(new_key, close_existing=close_existing)

    def set_attachment_fetch(
        self,
        mode: FetchMode | str = FetchMode.SERVE,
        *,
        status: int | None = None,
        times: int | None = None,
        redirect_base: str | None = None,
    ) -> None:
        """Answer attachment fetches by ``mode``: ``serve``, ``redirect`` (302 to a signed URL under
        ``redirect_base``, default this simulator), ``fail`` (``status``, default 500) or ``hang``
        (held until the next call or the stop, then 503); for ``times`` fetches, else until
        changed. Fetches held open so far are answered at once.

        Raises:
            ValueError: an unknown mode, or an option that does not fit it.
        """
        self._files.configure(
            FetchBehaviour(
                mode=FetchMode(mode), status=status, times=times, redirect_base=redirect_base
            )
        )
