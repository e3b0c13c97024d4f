"""HTTP sink: POSTs each event's original bytes, re-signed as OpenMail signs, to an agent's
webhook, and classifies the outcome as delivered, retryable or permanent."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final, Literal

import aiohttp
from multidict import CIMultiDict

from bridge import __version__, protocol
from bridge.attachments.service import AttachmentService
from bridge.attachments.settings import AttachmentsConfig
from bridge.config.schema import SinkConfig
from bridge.config.values import Duration, HttpUrl, Secret
from bridge.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from bridge.redact import header_secrets, literal_secrets, mask_url, scrub_text, url_secrets

if TYPE_CHECKING:
    from bridge.store import Delivery


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSinkOptions:
    url: HttpUrl
    secret: Secret | None = None
    signature: Literal["openmail", "standard-webhooks"] = "openmail"
    # Masked in `check` and /status: extra headers usually carry credentials (Authorization,
    # X-Api-Key), and `check`'s printout reaches the journal through the unit's ExecStartPre.
    headers: Mapping[str, str] = field(default_factory=dict, metadata={"masked": True})
    timeout: Duration = 10.0
    verify_tls: bool = True
    format: Literal["event", "batch"] = "event"
    """``batch``: the events of a thread's debounce window go as one POST ``{"events": [...]}``."""
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    """``fetch: true``: each attachment is downloaded and the payload names its local file."""

    def __post_init__(self) -> None:
        # Checked here so that `openmail-bridge check` reports it, not only start-up.
        if self.secret is not None and self.signature == "standard-webhooks":
            try:
                standard_webhooks_key(self.secret.get())
            except ValueError as exc:
                raise ValueError(f"secret: {exc}") from None
        parts = urllib.parse.urlsplit(self.url)  # the config checked it parses
        named = [name for name in self.headers if name.lower() == "authorization"]
        if named and (parts.username is not None or parts.password is not None):
            # Every attempt would fail: a request carries one Authorization header.
            raise ValueError(
                f"headers.{named[0]}: conflicts with the credentials in url (user:password@): "
                "a request carries one Authorization header; keep one of the two"
            )


SOURCE_HEADER: Final = "X-OpenMail-Bridge-Source"
NO_REPLY_HEADER: Final = "X-OpenMail-Bridge-No-Reply"
"""``true`` on mail OpenMail marked ``auto_replyable: false``."""
"""``websocket`` or ``webhook``: how the bridge received the event."""
EVENT_IDS_HEADER: Final = "X-OpenMail-Bridge-Event-Ids"
"""A debounce window's POST: the ids of its events, in order, comma-separated."""
USER_AGENT: Final = f"openmail-bridge/{__version__}"
STANDARD_WEBHOOKS_PREFIX: Final = "whsec_"
BODY_EXCERPT: Final = 200
"""Characters of an error response's body quoted in the error message."""
_BODY_READ_LIMIT: Final = 64 << 10
"""Bytes of a response read at most; reading them lets the connection be reused."""
_HEADER_VALUE: Final = re.compile(r"[!-~]+")
"""Visible ASCII: an event id that is safe to put in a header as it is."""


# --- Signatures ----------------------------------------------------------------------------------


def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key for a Standard Webhooks secret.

    ``whsec_<base64>`` is decoded as the spec encodes it (padding optional, as its reference
    library accepts); any other secret is used as its UTF-8 bytes.

    Raises:
        ValueError: a ``whsec_`` secret whose rest is not base64, or decodes to nothing.
    """
    if not secret.startswith(STANDARD_WEBHOOKS_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(STANDARD_WEBHOOKS_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    if not key:
        raise ValueError("a whsec_ secret must not be empty after the prefix")
    return key


def standard_webhooks_signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>``."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- Classification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What classification needs of a response."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


def classify(
    url: str,
    outcome: HttpResponse | BaseException,
    *,
    timeout: float,
    now: float,
    redact: Iterable[str] = (),
) -> DeliveryError | None:
    """The one place that decides what a response or a transport error means.

    2xx: delivered (None). Timeouts, connection errors, 408, 429 and 5xx: retryable, with 429 and
    503 carrying ``Retry-After`` as ``retry_after`` seconds. Anything else (3xx, since redirects
    are not followed; other 4xx): permanent. The message is what ``/status``, the logs and the
    dead-letter table show, so it is scrubbed: the strings in ``redact`` (secret, signature,
    configured header values, URL credentials), URL credentials and anything else that looks
    secret are masked, should the receiver echo them or an exception quote them.
    """
    if isinstance(outcome, HttpResponse) and 200 <= outcome.status < 300:
        return None
    known = literal_secrets(redact)
    if isinstance(outcome, BaseException):
        if isinstance(outcome, TimeoutError):
            return RetryableDeliveryError(f"no response within {timeout:g}s")
        if isinstance(outcome, aiohttp.ClientConnectorError):
            message = f"cannot connect to {url}: {_connect_reason(outcome)}"
        else:
            message = f"connection to {url} failed: {str(outcome) or type(outcome).__name__}"
        return RetryableDeliveryError(scrub_text(message, known))
    status = outcome.status
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(outcome.headers.get("Retry-After"), now)
    message = f"HTTP {status} from {url}"
    if retry_after is not None:
        # Named, so that a row dead-lettered for a wait past retry.max_age says why.
        message += f" (Retry-After {retry_after:.0f}s)"
    if 300 <= status < 400:
        location = mask_url(outcome.headers.get("Location", ""))[:BODY_EXCERPT]
        message += f" (redirect to {location}; redirects are not followed)" if location else ""
    else:
        # Scrubbed before it is cut, so that no secret is cut in two and half of it shown.
        text = scrub_text(outcome.body.decode("utf-8", "replace"), known)
        excerpt = " ".join(text.split())[:BODY_EXCERPT]
        message += f": {excerpt}" if excerpt else ""
    message = scrub_text(message, known)
    if status in (408, 429) or status >= 500:
        return RetryableDeliveryError(message, retry_after=retry_after)
    return PermanentDeliveryError(message)


RETRY_AFTER_MAX: Final = 1e9
"""Seconds a ``Retry-After`` is taken for at most (some 31 years: past any ``max_age``): a
400-digit one would otherwise be infinite."""


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delay-seconds or an HTTP-date; None if unusable."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), RETRY_AFTER_MAX)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # "-0000" parses as naive; an HTTP-date is always GMT
        moment = moment.replace(tzinfo=UTC)
    return min(max(0.0, moment.timestamp() - now), RETRY_AFTER_MAX)


def _connect_reason(exc: aiohttp.ClientConnectorError) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not accepted: {exc.certificate_error}"
    error = exc.os_error
    if isinstance(error, socket.gaierror):
        return f"cannot resolve {exc.host}: {error.strerror}"
    if error.errno is not None and error.errno > 0:
        # asyncio's strerror is "Connect call failed (...)"; the errno's own text is clearer.
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


# --- The sink ------------------------------------------------------------------------------------


class HttpSink:
    """POSTs each event's original payload bytes, unchanged, to ``url`` (with
    ``attachments.fetch``, a ``message.received`` event with attachments is the one exception: its
    attachments name the files the bridge downloaded, see ``bridge.attachments``).

    With a ``secret`` every attempt is signed afresh (new timestamp), exactly as OpenMail signs
    (``X-Timestamp``, ``X-Signature``) or, with ``signature: standard-webhooks``, as that spec does
    (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``), so a retry hours later still
    passes the receiver's freshness window.

    Args:
        config: the sink's config, with its :class:`HttpSinkOptions`.
        session: a session to use instead of one of its own; the sink never closes it.
        clock: Unix time for signature timestamps and ``Retry-After`` dates (tests fake it).
        attachments: the attachment service to use instead of the one ``attachments.fetch``
            makes; the sink starts and closes it.
    """

    def __init__(
        self,
        config: SinkConfig[HttpSinkOptions],
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        attachments: AttachmentService | None = None,
    ) -> None:
        options = config.options
        if attachments is None and options.attachments.fetch:
            attachments = AttachmentService(config.name, options.attachments, user_agent=USER_AGENT)
        self._attachments = attachments
        self.name = config.name
        self._options = options
        self._session = session
        self._owns_session = session is None
        self._clock = clock
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        self._display_url = mask_url(options.url)  # no credentials in errors
        # Masked in every error this sink raises: a receiver may echo its request headers.
        self._credentials = (
            *header_secrets(options.headers),
            *url_secrets(options.url),
        )
        self._headers: CIMultiDict[str] = CIMultiDict(options.headers)
        self._headers.setdefault("User-Agent", USER_AGENT)
        self._secret = options.secret.get() if options.secret else None
        self._standard_key: bytes | None = None
        if self._secret is not None and options.signature == "standard-webhooks":
            # HttpSinkOptions checked the secret when the config was loaded.
            self._standard_key = standard_webhooks_key(self._secret)

    async def start(self) -> None:
        """Create the sink's pooled session, unless one was given; start fetching attachments
        when it does."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, cookie_jar=aiohttp.DummyCookieJar()
            )
        if self._attachments is not None:
            await self._attachments.start()

    async def send(self, delivery: Delivery) -> None:
        """POST the event; returns once the receiver answered 2xx.

        Raises:
            RetryableDeliveryError: connection error, timeout, 408, 429 or 5xx.
            PermanentDeliveryError: any other status, or an event id unfit for a header.
        """
        if not _HEADER_VALUE.fullmatch(delivery.event_id):
            raise PermanentDeliveryError(
                f"event id {delivery.event_id!r} cannot be sent in a header"
            )
        body = await self._payload(delivery)
        await self._post(body, self._request_headers(delivery, body))

    @property
    def sends_windows(self) -> bool:
        """Whether a debounce window's events go as one request (``format: batch``)."""
        return self._options.format == "batch"

    async def send_window(self, deliveries: Sequence[Delivery]) -> None:
        """POST a debounce window's events as one request, ``{"events": [...]}``: each event's
        payload as a single POST would carry it, in order. Signed as a single POST is, with
        ``X-Event-Id`` (and ``webhook-id``) the first event's id and
        ``X-OpenMail-Bridge-Event-Ids`` all of them.

        Raises:
            RetryableDeliveryError: as :meth:`send`.
            PermanentDeliveryError: as :meth:`send`, or an event id unfit for the ids header.
        """
        ids = [delivery.event_id for delivery in deliveries]
        for event_id in ids:
            if not _HEADER_VALUE.fullmatch(event_id) or "," in event_id:
                raise PermanentDeliveryError(f"event id {event_id!r} cannot be sent in a header")
        # The events' payloads (their attachments, when fetched) are made ready side by side.
        body = window_body(await asyncio.gather(*(self._payload(d) for d in deliveries)))
        headers = self._headers.copy()
        headers["Content-Type"] = "application/json"
        headers[protocol.EVENT_ID_HEADER] = ids[0]
        headers[EVENT_IDS_HEADER] = ",".join(ids)
        # How the bridge received them: one word when they agree, else each one once.
        headers[SOURCE_HEADER] = ",".join(dict.fromkeys(d.origin.value for d in deliveries))
        if all(protocol.not_auto_replyable(d.payload) for d in deliveries):
            # Not to be answered only when none of them is; each payload still says its own.
            headers[NO_REPLY_HEADER] = "true"
        await self._post(body, self._signed(headers, ids[0], body))

    async def _payload(self, delivery: Delivery) -> bytes:
        """What the receiver gets of one event, alone or in a window: its bytes as received,
        or, with ``attachments.fetch``, with each attachment's local file (or reason) added."""
        if self._attachments is None:
            return delivery.payload
        return await self._attachments.payload(delivery)

    async def _post(self, body: bytes, headers: CIMultiDict[str]) -> None:
        """POST ``body``; returns on 2xx, else raises the classified error."""
        session = self._session
        if session is None:
            raise RuntimeError(f"sink {self.name!r} is not started")
        outcome: HttpResponse | BaseException
        try:
            async with session.post(
                self._options.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                ssl=self._options.verify_tls,
            ) as response:
                outcome = HttpResponse(
                    response.status, response.headers, await _read_some(response)
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            outcome = exc
        error = classify(
            self._display_url,
            outcome,
            timeout=self._options.timeout,
            now=self._clock(),
            redact=self._redactions(headers),  # read only for a failure
        )
        if error is not None:
            raise error

    async def reopen(self) -> None:
        pass

    async def close(self) -> None:
        """Stop fetching attachments; close the session if the sink created it."""
        if self._attachments is not None:
            await self._attachments.close()
        if self._owns_session and self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _redactions(self, headers: Mapping[str, str]) -> Iterator[str]:
        """What an error message must not show: credentials, the secret and the signature.
        A generator, so that a delivery that succeeded never gathers them."""
        yield from self._credentials
        if self._secret is not None:
            signature = headers.get(protocol.SIGNATURE_HEADER) or headers.get(
                "webhook-signature", ""
            )
            yield self._secret
            yield self._secret.removeprefix(STANDARD_WEBHOOKS_PREFIX)
            yield signature
            yield signature.removeprefix("v1,")

    def _request_headers(self, delivery: Delivery, body: bytes) -> CIMultiDict[str]:
        # Configured headers first; the bridge's own replace any of the same name.
        headers = self._headers.copy()
        headers["Content-Type"] = "application/json"
        headers[protocol.EVENT_ID_HEADER] = delivery.event_id
        headers[SOURCE_HEADER] = delivery.origin.value
        if protocol.not_auto_replyable(delivery.payload):
            # Only mail a route's guard let through gets here marked so (guard.auto_replyable:
            # deliver, or guard: false): the agent may read it, and should not answer it.
            headers[NO_REPLY_HEADER] = "true"
        return self._signed(headers, delivery.event_id, body)

    def _signed(self, headers: CIMultiDict[str], msg_id: str, body: bytes) -> CIMultiDict[str]:
        """``headers`` with the signature of ``body`` added, when the sink has a secret."""
        if self._secret is None:
            return headers
        # Signed now, at this attempt: a stored signature would go stale in the receiver's window.
        timestamp = int(self._clock())
        if self._standard_key is not None:
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = standard_webhooks_signature(
                self._standard_key, msg_id, timestamp, body
            )
        else:
            headers[protocol.TIMESTAMP_HEADER] = str(timestamp)
            headers[protocol.SIGNATURE_HEADER] = protocol.sign(self._secret, timestamp, body)
        return headers


def window_body(payloads: Sequence[bytes]) -> bytes:
    """``{"events": [...]}`` around event payloads (each a JSON object), their bytes unchanged."""
    return b'{"events":[' + b",".join(payloads) + b"]}"


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    """Up to ``_BODY_READ_LIMIT`` bytes of the body; what arrived if reading fails (the status
    has already decided the outcome)."""
    body = bytearray()
    try:
        while len(body) < _BODY_READ_LIMIT:
            chunk = await response.content.read(_BODY_READ_LIMIT - len(body))
            if not chunk:
                break
            body += chunk
    except (aiohttp.ClientError, TimeoutError, OSError):
        pass
    return bytes(body)
