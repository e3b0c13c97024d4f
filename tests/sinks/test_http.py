"""HTTP sink against a real aiohttp receiver on 127.0.0.1 that verifies as OpenMail documents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.config import Secret, SinkConfig, build_config
from bridge.errors import ConfigError, PermanentDeliveryError, RetryableDeliveryError
from bridge.events import Origin
from bridge.sinks import SINK_TYPES
from bridge.sinks.http import HttpSink, HttpSinkOptions, parse_retry_after
from bridge.store import Delivery

SECRET = "whk_s3cr3t-for-tests"
PAYLOAD = (
    b'{"event": "message.received",  "event_id": "evt_7f2a3b4c", "attempt": 1,\n'
    b' "inbox_id": "inb_8f3a1b2c", "message": {"subject": "Gr\xc3\xbc\xc3\x9fe \\u2603"}}'
)


def make_delivery(
    payload: bytes = PAYLOAD, *, event_id: str = "evt_7f2a3b4c", origin: Origin = Origin.WEBHOOK
) -> Delivery:
    return Delivery(
        id=1,
        seq=1,
        sink="agent",
        event_id=event_id,
        type="message.received",
        inbox_id="inb_8f3a1b2c",
        thread_id=None,
        origin=origin,
        received_at=1771927500.0,
        payload=payload,
        attempts=0,
        last_error=None,
    )


def openmail_problem(secret: str, headers: CIMultiDictProxy[str], body: bytes) -> str | None:
    """OpenMail's documented check, written from the docs: None when the request is genuine."""
    timestamp = headers.get("X-Timestamp")
    signature = headers.get("X-Signature")
    if not timestamp or not signature:
        return "missing signature headers"
    if abs(time.time() - int(timestamp)) > 300:
        return "stale timestamp"
    expected = hmac.new(secret.encode("utf-8"), timestamp.encode() + b"." + body, hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest(), signature):
        return "bad signature"
    return None


# --- Fixtures ------------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: CIMultiDict[str]
    body: bytes


Responder = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, body: bytes) -> web.StreamResponse:
    return web.Response(text="ok")


class Receiver:
    """Records every request and answers with ``respond`` (200 by default)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.respond: Responder = ok
        self.release = asyncio.Event()  # lets slow handlers finish at teardown
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Received(request.path, request.headers.copy(), body))
        return await self.respond(request, body)


async def serve(ssl_context: ssl.SSLContext | None = None):
    receiver = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    receiver.url = f"{scheme}://127.0.0.1:{port}/webhooks"
    return receiver, runner


@pytest.fixture
async def receiver():
    receiver, runner = await serve()
    yield receiver
    receiver.release.set()
    await runner.cleanup()


@pytest.fixture
async def sinks():
    made: list[HttpSink] = []

    async def factory(url: str, *, session=None, clock=time.time, **options) -> HttpSink:
        config = SinkConfig(name="agent", type="http", options=HttpSinkOptions(url=url, **options))
        sink = HttpSink(config, session=session, clock=clock)
        await sink.start()
        made.append(sink)
        return sink

    yield factory
    for sink in made:
        await sink.close()


def openmail_receiver(secret: str) -> Responder:
    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        problem = openmail_problem(secret, request.headers, body)
        if problem:
            return web.Response(status=400, text=problem)
        return web.Response(text="ok")

    return respond


# --- Payload, headers, OpenMail signature --------------------------------------------------------


@pytest.mark.parametrize("origin", [Origin.WEBHOOK, Origin.WEBSOCKET])
async def test_delivery_passes_openmail_verification_with_body_unchanged(receiver, sinks, origin):
    receiver.respond = openmail_receiver(SECRET)
    sink = await sinks(receiver.url, secret=Secret(SECRET))
    await sink.send(make_delivery(origin=origin))
    (request,) = receiver.requests
    assert request.body == PAYLOAD
    assert request.path == "/webhooks"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Event-Id"] == "evt_7f2a3b4c"
    assert request.headers["X-OpenMail-Bridge-Source"] == origin.value
    assert request.headers["X-Timestamp"].isdigit()
    assert abs(int(request.headers["X-Timestamp"]) - time.time()) < 5
    assert len(request.headers["X-Signature"]) == 64


async def test_a_receiver_with_another_secret_rejects_it_permanently(receiver, sinks):
    receiver.respond = openmail_receiver("another secret")
    sink = await sinks(receiver.url, secret=Secret(SECRET))
    with pytest.raises(PermanentDeliveryError) as caught:
        await sink.send(make_delivery())
    assert str(caught.value) == f"HTTP 400 from {receiver.url}: bad signature"


async def test_every_attempt_is_signed_afresh(receiver, sinks):
    verdicts: list[str | None] = []

    async def flaky_then_ok(request: web.Request, body: bytes) -> web.StreamResponse:
        verdicts.append(openmail_problem(SECRET, request.headers, body))
        if len(verdicts) == 1:
            return web.Response(status=503, text="restarting")
        return web.Response(status=204)

    receiver.respond = flaky_then_ok
    offset = [-250.0]  # the first attempt was made 250 s ago
    sink = await sinks(receiver.url, secret=Secret(SECRET), clock=lambda: time.time() + offset[0])
    with pytest.raises(RetryableDeliveryError, match="HTTP 503"):
        await sink.send(make_delivery())
    offset[0] = 0.0
    await sink.send(make_delivery())

    first, second = (r.headers for r in receiver.requests)
    assert verdicts == [None, None]
    assert int(second["X-Timestamp"]) - int(first["X-Timestamp"]) in range(249, 252)
    assert first["X-Signature"] != second["X-Signature"]
    # Replaying the first attempt's headers now, 250 s on, would soon fall out of the window:
    # the second attempt is what keeps a late retry verifiable.
    assert abs(int(second["X-Timestamp"]) - time.time()) < 5


async def test_without_a_secret_no_signature_headers(receiver, sinks):
    sink = await sinks(receiver.url)
    await sink.send(make_delivery())
    headers = receiver.requests[0].headers
    for name in ("X-Signature", "X-Timestamp", "webhook-signature", "webhook-timestamp"):
        assert name not in headers
    assert headers["X-Event-Id"] == "evt_7f2a3b4c"


async def test_extra_headers_are_sent_but_cannot_replace_the_bridge_headers(receiver, sinks):
    receiver.respond = openmail_receiver(SECRET)
    extra = {
        "Authorization": "Bearer agent-token",
        "X-Tenant": "acme",
        "x-signature": "forged",
        "content-type": "text/plain",
    }
    sink = await sinks(receiver.url, secret=Secret(SECRET), headers=extra)
    await sink.send(make_delivery())  # verified: the forged signature was replaced
    headers = receiver.requests[0].headers
    assert headers["Authorization"] == "Bearer agent-token"
    assert headers["X-Tenant"] == "acme"
    assert headers.getall("Content-Type") == ["application/json"]
    assert len(headers.getall("X-Signature")) == 1
    assert headers["User-Agent"].startswith("openmail-bridge/")


# --- Standard Webhooks ---------------------------------------------------------------------------


@pytest.mark.parametrize("padded", [True, False])
async def test_standard_webhooks_verified_by_the_reference_library(receiver, sinks, padded):
    key = bytes(range(32))  # base64 of 32 bytes ends with "="
    encoded = base64.b64encode(key).decode()
    secret = "whsec_" + (encoded if padded else encoded.rstrip("="))
    verified: list[object] = []

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        try:
            verified.append(Webhook(secret).verify(body, dict(request.headers)))
        except WebhookVerificationError as exc:
            return web.Response(status=400, text=str(exc))
        return web.Response(text="ok")

    receiver.respond = respond
    sink = await sinks(receiver.url, secret=Secret(secret), signature="standard-webhooks")
    await sink.send(make_delivery())
    assert verified == [json.loads(PAYLOAD)]
    headers = receiver.requests[0].headers
    assert headers["webhook-id"] == "evt_7f2a3b4c"
    assert headers["webhook-signature"].startswith("v1,")
    assert "X-Signature" not in headers
    assert receiver.requests[0].body == PAYLOAD


async def test_standard_webhooks_with_the_wrong_key_is_rejected(receiver, sinks):
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    other = "whsec_" + base64.b64encode(b"o" * 24).decode()

    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        try:
            Webhook(other).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            return web.Response(status=401, text=str(exc))
        return web.Response(text="ok")

    receiver.respond = respond
    sink = await sinks(receiver.url, secret=Secret(secret), signature="standard-webhooks")
    with pytest.raises(PermanentDeliveryError, match=r"HTTP 401 .*No matching signature"):
        await sink.send(make_delivery())


def test_a_whsec_secret_that_is_not_base64_is_a_config_error(tmp_path):
    raw = {
        "openmail": {"websocket": {"enabled": False}, "webhook": {"secret": "s"}},
        "sinks": {
            "agent": {
                "type": "http",
                "url": "http://127.0.0.1:1/",
                "secret": "whsec_%%%",
                "signature": "standard-webhooks",
            }
        },
    }
    with pytest.raises(ConfigError, match=r"sinks\.agent\.secret: .*base64"):
        build_config(raw, base_dir=tmp_path, sink_types=SINK_TYPES, env={})


# --- Classification ------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (200, {}, None, None),
        (202, {}, None, None),
        (204, {}, None, None),
        (301, {"Location": "/moved"}, PermanentDeliveryError, None),
        (400, {}, PermanentDeliveryError, None),
        (401, {}, PermanentDeliveryError, None),
        (404, {}, PermanentDeliveryError, None),
        (408, {}, RetryableDeliveryError, None),
        (409, {}, PermanentDeliveryError, None),
        (429, {"Retry-After": "120"}, RetryableDeliveryError, 120.0),
        (429, {"Retry-After": formatdate(NOW + 90, usegmt=True)}, RetryableDeliveryError, 90.0),
        (429, {}, RetryableDeliveryError, None),
        (500, {"Retry-After": "5"}, RetryableDeliveryError, None),  # only 429 and 503 count
        (502, {}, RetryableDeliveryError, None),
        (503, {"Retry-After": "7"}, RetryableDeliveryError, 7.0),
        (503, {"Retry-After": formatdate(NOW - 60, usegmt=True)}, RetryableDeliveryError, 0.0),
        (503, {"Retry-After": "soon"}, RetryableDeliveryError, None),
        (503, {"Retry-After": "9" * 400}, RetryableDeliveryError, 1e9),  # not infinite
    ],
)
async def test_status_classification(receiver, sinks, status, headers, error, retry_after):
    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=status, headers=headers)

    receiver.respond = respond
    sink = await sinks(receiver.url, clock=lambda: NOW)
    if error is None:
        await sink.send(make_delivery())
    else:
        with pytest.raises(error) as caught:
            await sink.send(make_delivery())
        assert str(caught.value).startswith(f"HTTP {status} from {receiver.url}")
        if status == 301:
            assert "(redirect to /moved; redirects are not followed)" in str(caught.value)
        if error is RetryableDeliveryError:
            assert caught.value.retry_after == retry_after
            # Named in the error, so that a row dead-lettered for a wait past max_age says why.
            shown = {120.0: "120s", 90.0: "90s", 7.0: "7s", 0.0: "0s", 1e9: "1000000000s"}
            if retry_after is None:
                assert "Retry-After" not in str(caught.value)
            else:
                assert f"(Retry-After {shown[retry_after]})" in str(caught.value)
    assert len(receiver.requests) == 1  # a redirect is not followed


async def test_the_error_quotes_the_first_200_characters_of_the_body(receiver, sinks):
    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=422, text="invalid: " + "x" * 500)

    receiver.respond = respond
    sink = await sinks(receiver.url)
    with pytest.raises(PermanentDeliveryError) as caught:
        await sink.send(make_delivery())
    assert str(caught.value) == f"HTTP 422 from {receiver.url}: invalid: " + "x" * 191


async def test_the_secret_and_signature_never_appear_in_the_error(receiver, sinks):
    async def echo(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(
            status=400, text=f"sig {request.headers['X-Signature']} secret {SECRET} rejected"
        )

    receiver.respond = echo
    sink = await sinks(receiver.url, secret=Secret(SECRET))
    with pytest.raises(PermanentDeliveryError) as caught:
        await sink.send(make_delivery())
    message = str(caught.value)
    assert message == f"HTTP 400 from {receiver.url}: sig *** secret *** rejected"
    assert receiver.requests[0].headers["X-Signature"] not in message


async def test_credentials_in_the_url_stay_out_of_the_error(receiver, sinks):
    async def respond(request: web.Request, body: bytes) -> web.StreamResponse:
        return web.Response(status=500)

    url = receiver.url.replace("http://", "http://user:hunter2@")
    sink = await sinks(url)
    receiver.respond = respond
    with pytest.raises(RetryableDeliveryError) as caught:
        await sink.send(make_delivery())
    # Masked, not dropped: the reader still sees that the URL carries credentials.
    assert str(caught.value) == f"HTTP 500 from {receiver.url.replace('http://', 'http://***@')}"
    assert receiver.requests[0].headers["Authorization"].startswith("Basic ")


async def test_echoed_request_headers_and_url_credentials_never_appear_in_the_error(
    receiver, sinks
):
    """A receiver that quotes the whole request back in its error body, as careless frameworks
    do: neither the configured header credentials nor the URL's token reach the error (which
    becomes ``last_error``, a log line and the dead-letter row)."""

    async def echo(request: web.Request, body: bytes) -> web.StreamResponse:
        lines = [f"{request.method} {request.path_qs}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        return web.Response(status=400, text="bad request\n" + "\n".join(lines))

    receiver.respond = echo
    bearer, api_key, url_token = "bearer-xyz-0123456789", "custom-api-key-4321", "url-token-5678"
    sink = await sinks(
        f"{receiver.url}?token={url_token}",
        headers={"Authorization": f"Bearer {bearer}", "X-Api-Key": api_key},
    )
    with pytest.raises(PermanentDeliveryError) as caught:
        await sink.send(make_delivery())
    sent = receiver.requests[0].headers
    assert (sent["Authorization"], sent["X-Api-Key"]) == (f"Bearer {bearer}", api_key)
    message = str(caught.value)
    assert message.startswith(f"HTTP 400 from {receiver.url}?token=***: bad request")
    assert "X-Api-Key: ***" in message  # the echo is there, its values are not
    for value in (bearer, api_key, url_token):
        assert value not in message


async def test_a_connection_error_does_not_show_the_url_token(sinks):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sink = await sinks(f"http://127.0.0.1:{port}/hook?api_key=url-key-97531")
    with pytest.raises(RetryableDeliveryError) as caught:
        await sink.send(make_delivery())
    assert str(caught.value).startswith(
        f"cannot connect to http://127.0.0.1:{port}/hook?api_key=***"
    )
    assert "url-key-97531" not in str(caught.value)


async def test_connection_refused_is_retryable(sinks):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/webhooks"
    sink = await sinks(url)
    with pytest.raises(RetryableDeliveryError) as caught:
        await sink.send(make_delivery())
    assert str(caught.value) == f"cannot connect to {url}: Connection refused"
    assert caught.value.retry_after is None


async def test_no_response_within_the_timeout_is_retryable(receiver, sinks):
    async def hang(request: web.Request, body: bytes) -> web.StreamResponse:
        await receiver.release.wait()
        return web.Response()

    receiver.respond = hang
    sink = await sinks(receiver.url, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RetryableDeliveryError) as caught:
        await sink.send(make_delivery())
    assert 0.15 < time.monotonic() - started < 2.0
    assert str(caught.value) == "no response within 0.2s"


async def test_a_dropped_connection_is_retryable(receiver, sinks):
    async def drop(request: web.Request, body: bytes) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    receiver.respond = drop
    sink = await sinks(receiver.url)
    with pytest.raises(RetryableDeliveryError, match=f"^connection to {receiver.url} failed: "):
        await sink.send(make_delivery())


@pytest.mark.parametrize("event_id", ["evt_1\r\nX-Injected: 1", "", "evt 1"])
async def test_an_event_id_unfit_for_a_header_is_permanent(receiver, sinks, event_id):
    sink = await sinks(receiver.url)
    with pytest.raises(PermanentDeliveryError, match="cannot be sent in a header"):
        await sink.send(make_delivery(event_id=event_id))
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
        (formatdate(NOW + 30), 30.0),  # numeric zone "-0000"
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # past
        (None, None),
        ("", None),
        ("-5", None),
        ("1.5", None),
        ("²", None),
        ("tomorrow", None),
    ],
)
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, NOW) == seconds


# --- Sessions and TLS ----------------------------------------------------------------------------


async def test_an_injected_session_is_used_and_left_open(receiver, sinks):
    async with aiohttp.ClientSession(headers={"X-From-Session": "yes"}) as session:
        sink = await sinks(receiver.url, session=session)
        await sink.send(make_delivery())
        await sink.close()
        assert not session.closed
        assert receiver.requests[0].headers["X-From-Session"] == "yes"


async def test_an_own_session_is_closed_by_close(receiver, sinks):
    sink = await sinks(receiver.url)
    await sink.send(make_delivery())
    await sink.close()
    with pytest.raises(RuntimeError, match="not started"):
        await sink.send(make_delivery())


@pytest.fixture
async def tls_receiver(tls_context):
    receiver, runner = await serve(tls_context)
    yield receiver
    await runner.cleanup()


async def test_tls_is_verified_by_default(tls_receiver, sinks):
    sink = await sinks(tls_receiver.url)
    with pytest.raises(RetryableDeliveryError) as caught:
        await sink.send(make_delivery())
    assert str(caught.value).startswith(
        f"cannot connect to {tls_receiver.url}: TLS certificate not accepted: "
    )
    assert tls_receiver.requests == []


async def test_verify_tls_false_accepts_a_self_signed_certificate(tls_receiver, sinks):
    sink = await sinks(tls_receiver.url, verify_tls=False)
    await sink.send(make_delivery())
    assert tls_receiver.requests[0].body == PAYLOAD
