"""Signed webhook delivery with OpenMail's retry schedule (§7), and where each event's webhook is.

:class:`WebhookTargets` holds the account webhook and the inboxes' own; :class:`WebhookSender` POSTs
events in background tasks, one task per event, re-stamping ``attempt``/``delivered_at`` and
re-signing on every attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog

from bridge import protocol
from bridge.simulator.records import DeliveryRecord, encode, stamp

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    url: str
    secret: str = field(repr=False)


class WebhookTargets:
    """The account webhook and the inboxes' own webhooks, which override it and have own secrets."""

    def __init__(self, owned: frozenset[str]) -> None:
        self._owned = owned
        self._account: WebhookTarget | None = None
        self._inboxes: dict[str, WebhookTarget] = {}

    def set(self, url: str | None, secret: str | None, inbox_id: str | None) -> None:
        """Set, or with ``url=None`` remove, a webhook.

        Raises:
            ValueError: an inbox that is not owned, a non-http(s) URL, or no secret.
        """
        if inbox_id is not None and inbox_id not in self._owned:
            raise ValueError(f"inbox {inbox_id} is not one of the simulator's inboxes")
        if url is None:
            if inbox_id is None:
                self._account = None
            else:
                self._inboxes.pop(inbox_id, None)
            return
        if not url.startswith(("http://", "https://")):
            raise ValueError("webhook url must be an http(s) URL")
        if not secret:
            raise ValueError("a webhook needs a secret to sign with")
        if inbox_id is None:
            self._account = WebhookTarget(url, secret)
        else:
            self._inboxes[inbox_id] = WebhookTarget(url, secret)

    def resolve(self, inbox_id: str | None) -> WebhookTarget | None:
        """The webhook an event of ``inbox_id`` goes to: the inbox's own, else the account's."""
        if inbox_id is not None and inbox_id in self._inboxes:
            return self._inboxes[inbox_id]
        return self._account

    def to_json(self) -> dict[str, object]:
        """The configuration without secrets."""

        def show(target: WebhookTarget | None) -> dict[str, object] | None:
            return None if target is None else {"url": target.url, "secret_set": True}

        return {
            "account": show(self._account),
            "inboxes": {inbox: show(t) for inbox, t in sorted(self._inboxes.items())},
        }


class WebhookSender:
    """Delivers events by webhook in the background; owns one ``ClientSession``.

    Args:
        resolve: returns the webhook for an event's ``inbox_id`` at the time of each attempt, so a
            rotated secret or a removed webhook takes effect on the next retry, as on OpenMail.
        record: called with every :class:`DeliveryRecord`.
        retry_delays: delay before each attempt, the first usually 0; its length is the number
            of attempts.
        retry_scale: multiplies every delay (tests use e.g. 0.01).
        timeout: seconds within which a 2xx must arrive.
    """

    def __init__(
        self,
        *,
        resolve: Callable[[str | None], WebhookTarget | None],
        record: Callable[[DeliveryRecord], None],
        retry_delays: Sequence[float],
        retry_scale: float,
        timeout: float,
    ) -> None:
        if not retry_delays:
            raise ValueError("retry_delays needs at least one entry (the first attempt)")
        if retry_scale < 0 or any(d < 0 for d in retry_delays) or timeout <= 0:
            raise ValueError("retry delays and scale must be >= 0 and timeout > 0")
        self._resolve = resolve
        self._record = record
        self._delays = tuple(retry_delays)
        self._scale = retry_scale
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0

    @property
    def pending(self) -> int:
        """Events whose webhook delivery is still in progress (including waits between retries)."""
        return self._active

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        """Cancel pending deliveries and retries, then close the session."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def submit(self, event: dict[str, object]) -> None:
        """Start delivering ``event``; the first attempt begins on the next loop iteration."""
        if self._session is None:
            raise RuntimeError("the simulator is not started")
        task = asyncio.create_task(self._deliver(event))
        self._active += 1
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, event: dict[str, object]) -> None:
        try:
            verdict = await self._attempts(event)
        finally:
            # Before the verdict is recorded, so an observer of the record sees pending == 0.
            self._active -= 1
        if verdict is not None:
            self._record(verdict)

    async def _attempts(self, event: dict[str, object]) -> DeliveryRecord | None:
        """Every attempt until a 2xx (None) or the last failure (the ``failed`` record)."""
        event_id = str(event.get("event_id"))
        inbox = event.get("inbox_id")
        inbox_id = inbox if isinstance(inbox, str) else None
        status: int | None = None
        error: str | None = None
        for attempt, delay in enumerate(self._delays, start=1):
            if delay > 0:
                await asyncio.sleep(delay * self._scale)
            target = self._resolve(inbox_id)
            if target is None:
                error = "webhook removed before the attempt"
                break
            status, error = await self._attempt(target, event, attempt)
            self._record(
                DeliveryRecord(
                    event_id=event_id,
                    channel="webhook",
                    attempt=attempt,
                    status=status,
                    error=error,
                    url=target.url,
                )
            )
            if error is None:
                log.info("sim.webhook.delivered", event_id=event_id, attempt=attempt, status=status)
                return None
            log.info(
                "sim.webhook.attempt_failed", event_id=event_id, attempt=attempt, status=status
            )
        log.warning("sim.webhook.failed", event_id=event_id, attempts=len(self._delays))
        return DeliveryRecord(
            event_id=event_id,
            channel="failed",
            attempt=len(self._delays),
            status=status,
            error=error,
        )

    async def _attempt(
        self, target: WebhookTarget, event: dict[str, object], attempt: int
    ) -> tuple[int | None, str | None]:
        """One signed POST. Returns (HTTP status or None, error or None on a 2xx)."""
        assert self._session is not None
        body = encode(stamp(event, attempt)).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            protocol.TIMESTAMP_HEADER: str(timestamp),
            protocol.SIGNATURE_HEADER: protocol.sign(target.secret, timestamp, body),
            protocol.EVENT_ID_HEADER: str(event.get("event_id")),
        }
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._session.post(
                    target.url, data=body, headers=headers, allow_redirects=False
                ) as response,
            ):
                status = response.status
        except TimeoutError:
            return None, f"no response within {self._timeout:g} s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"
