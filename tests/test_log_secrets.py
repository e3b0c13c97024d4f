"""No log line, at any level, holds the API key, a webhook or sink secret, the admin token or a
signature; and the redactor in ``bridge.logs`` masks what it promises to.

The end-to-end test runs a real bridge subprocess (JSON logs on stderr at level debug) through
everything that logs: a rejected API key, valid and forged webhooks, deliveries that fail (the
receiver echoes the signature and credentials back in its error body) and are retried, a SIGHUP
with new secrets, a rejected SIGHUP, admin requests with wrong and right tokens, and a shutdown.
Then every line of stderr and stdout is searched for every secret and every signature sent or
received.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from conftest import (
    WEBHOOK_SECRET,
    BridgeProcess,
    bridge_config_dict,
    deep_merge,
    free_port,
    make_config,
    running_bridge,
    start_bridge_process,
    wait_until,
    write_config,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import logs
from bridge.simulator import Simulator
from bridge.store import Store

API_KEY = "om_live_LogSecretsKey0123456789abcdef"
WRONG_KEY = "rejected-key-c0ffee-1234567890"  # not om_-shaped: only its registration masks it
ACCOUNT_SECRET_1 = "acct-hook-secret-aaaa-1111"
ACCOUNT_SECRET_2 = "acct-hook-secret-bbbb-2222"
ACCOUNT_SECRET_3 = "acct-hook-secret-cccc-3333"  # only in the config the bridge rejects
INBOX = "inb_demo_support"
INBOX_SECRET = "inbox-hook-secret-dddd-4444"
SINK_SECRET_1 = "sink-signing-secret-eeee-5555"
SINK_SECRET_2 = "sink-signing-secret-ffff-6666"
STD_KEY = b"standard-webhooks-key-0123"
STD_SECRET = "whsec_" + base64.b64encode(STD_KEY).decode()
ADMIN_TOKEN = "admin-token-gggg-7777"
ADMIN_TOKEN_3 = "admin-token-hhhh-8888"
SECRETS = {
    "api key": API_KEY,
    "rejected api key": WRONG_KEY,
    "webhook secret": ACCOUNT_SECRET_1,
    "rotated webhook secret": ACCOUNT_SECRET_2,
    "webhook secret of the rejected config": ACCOUNT_SECRET_3,
    "inbox secret": INBOX_SECRET,
    "sink secret": SINK_SECRET_1,
    "rotated sink secret": SINK_SECRET_2,
    "standard-webhooks secret": STD_SECRET,
    "standard-webhooks key": STD_SECRET.removeprefix("whsec_"),
    "admin token": ADMIN_TOKEN,
    "admin token of the rejected config": ADMIN_TOKEN_3,
}
FAILURES_PER_EVENT = 2
"""The receiver answers 500 this many times per event and sink before it takes it."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


# --- a receiver that fails, echoing what it was sent --------------------------------------------


@dataclass
class EchoReceiver:
    """Two sink endpoints that answer 500 the first times for each event, with an error body that
    quotes the request's signature and credentials back (as careless frameworks do)."""

    attempts: dict[tuple[str, str], int] = field(default_factory=dict)
    signatures: set[str] = field(default_factory=set)
    delivered: dict[str, set[str]] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        event_id = request.headers.get("X-Event-Id", "")
        quoted = []
        for header in ("X-Signature", "webhook-signature", "Authorization", "X-Api-Key"):
            value = request.headers.get(header)
            if value:
                quoted.append(f"{header}={value}")
                if "ignature" in header:
                    self.signatures.add(value)
                    self.signatures.update(part.removeprefix("v1,") for part in value.split())
        key = (name, event_id)
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] <= FAILURES_PER_EVENT:
            return web.Response(
                status=500, text=f"rejected {' '.join(quoted)} for {len(body)} bytes"
            )
        self.delivered.setdefault(name, set()).add(event_id)
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- the bridge under test -----------------------------------------------------------------------


def config(
    tmp_path: Path,
    sim: Simulator,
    receiver: EchoReceiver,
    *,
    api_key: str,
    account_secret: str,
    sink_secret: str,
    admin_token: str,
    **extra: Any,
) -> dict[str, Any]:
    retry = {"initial": "20ms", "max": "100ms"}
    base = bridge_config_dict(tmp_path, sim)
    base["openmail"]["webhook"] = {"listen": "127.0.0.1:0"}
    return deep_merge(
        base,
        {
            "openmail": {
                "api_key": api_key,
                # A token= query as well as the header: clients that cannot set headers do this.
                "websocket": {"url": f"{sim.ws_url}?token={api_key}"},
                "webhook": {"secret": account_secret, "secrets": {INBOX: INBOX_SECRET}},
            },
            "admin": {"listen": "127.0.0.1:0", "token": admin_token},
            "log": {"level": "debug", "format": "json"},
            "sinks": {
                "hook": {
                    "type": "http",
                    "url": receiver.url("hook"),
                    "secret": sink_secret,
                    "retry": retry,
                },
                "std": {
                    "type": "http",
                    "url": receiver.url("std"),
                    "secret": STD_SECRET,
                    "signature": "standard-webhooks",
                    "retry": retry,
                },
            },
            "routes": [{"name": "all", "sinks": ["audit", "hook", "std"]}],
            **extra,
        },
    )


@dataclass
class Run:
    bridge: BridgeProcess
    session: aiohttp.ClientSession
    sent_signatures: set[str] = field(default_factory=set)
    webhook_port: int = 0
    admin_port: int = 0

    def logged(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.bridge.logs() if e.get("event") == name]

    async def wait_log(self, name: str, count: int = 1, timeout: float = 10.0) -> None:
        await wait_until(lambda: len(self.logged(name)) >= count, timeout=timeout, interval=0.05)

    def listen_port(self, name: str) -> int:
        return int(self.logged(name)[-1]["listen"].rpartition(":")[2])

    async def post(
        self,
        body: bytes,
        secret: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
    ) -> int:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        sig = signature if signature is not None else sign(secret, ts, body)
        self.sent_signatures.add(sig)
        headers = {"X-Timestamp": ts, "X-Signature": sig, "Content-Type": "application/json"}
        url = f"http://127.0.0.1:{self.webhook_port}/webhooks"
        async with self.session.post(url, data=body, headers=headers) as response:
            return response.status

    async def admin(self, path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        async with self.session.get(url, headers=headers) as response:
            return response.status


def event_body(event_id: str, inbox_id: str = INBOX) -> bytes:
    return json.dumps(
        {
            "event": "message.received",
            "event_id": event_id,
            "inbox_id": inbox_id,
            "occurred_at": "2026-02-24T10:05:00.000Z",
            "attempt": 1,
            "message": {"from": "a@example.com", "to": "support@openmail.sh"},
        }
    ).encode()


@pytest.fixture
async def echo() -> AsyncIterator[EchoReceiver]:
    receiver = EchoReceiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(api_key=API_KEY, retry_scale=0.01, ping_interval=5.0, pong_timeout=5.0)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


async def test_no_log_line_holds_a_secret_or_a_signature(
    tmp_path: Path,
    simulator: Simulator,
    echo: EchoReceiver,
    bridge_processes: list[BridgeProcess],
) -> None:
    path = tmp_path / "bridge.yaml"
    v1 = {
        "api_key": WRONG_KEY,
        "account_secret": ACCOUNT_SECRET_1,
        "sink_secret": SINK_SECRET_1,
        "admin_token": ADMIN_TOKEN,
    }
    write_config(path, config(tmp_path, simulator, echo, **v1))
    bridge = start_bridge_process(path)
    bridge_processes.append(bridge)
    async with aiohttp.ClientSession() as session:
        run = Run(bridge, session)
        await run.wait_log("webhook.listening")
        await run.wait_log("admin.listening")
        run.webhook_port, run.admin_port = (
            run.listen_port("webhook.listening"),
            run.listen_port("admin.listening"),
        )

        # 1. The API key is refused (the simulator closes with 4001 after an error frame).
        await run.wait_log("ws.rejected")

        # 2. Webhooks: valid (account and inbox secrets) and forged in every way.
        assert await run.post(event_body("evt_log_1"), ACCOUNT_SECRET_1) == 200
        assert await run.post(event_body("evt_log_2"), INBOX_SECRET) == 200
        assert await run.post(event_body("evt_log_3"), "a-secret-nobody-has-0000") == 400
        assert (
            await run.post(
                event_body("evt_log_4"), ACCOUNT_SECRET_1, timestamp=int(time.time()) - 3600
            )
            == 400
        )
        other_body_sig = sign(ACCOUNT_SECRET_1, str(int(time.time())), event_body("evt_other"))
        assert (
            await run.post(event_body("evt_log_5"), ACCOUNT_SECRET_1, signature=other_body_sig)
            == 400
        )
        assert await run.post(event_body("evt_log_6", inbox_id="inb_other"), INBOX_SECRET) == 400
        assert (
            await run.post(
                event_body("evt_log_7"), ACCOUNT_SECRET_1, signature="sha256=" + "ab" * 32
            )
            == 400
        )

        # 3. Admin: no token, a wrong one, the right one.
        assert await run.admin("/status") == 401
        assert await run.admin("/status", "not-the-admin-token") == 401
        assert await run.admin("/status", ADMIN_TOKEN) == 200
        assert await run.admin("/metrics", ADMIN_TOKEN) == 200

        # 4. Deliveries fail twice per event and sink (error bodies quote signatures), then land.
        await wait_until(
            lambda: echo.delivered.get("hook", set()) >= {"evt_log_1", "evt_log_2"}, timeout=15
        )
        await wait_until(
            lambda: echo.delivered.get("std", set()) >= {"evt_log_1", "evt_log_2"}, timeout=15
        )

        # 5. SIGHUP: the right API key, a rotated webhook secret and sink secret.
        v2 = {
            "api_key": API_KEY,
            "account_secret": ACCOUNT_SECRET_2,
            "sink_secret": SINK_SECRET_2,
            "admin_token": ADMIN_TOKEN,
        }
        write_config(path, config(tmp_path, simulator, echo, **v2))
        bridge.signal(signal.SIGHUP)
        await run.wait_log("config.reloaded")
        await run.wait_log("ws.connected")
        assert await run.post(event_body("evt_log_8"), ACCOUNT_SECRET_2) == 200
        assert (
            await run.post(event_body("evt_log_9"), ACCOUNT_SECRET_1) == 400
        )  # the old one is gone
        ws_event = await simulator.inject(inbox_id=INBOX)
        await wait_until(
            lambda: {"evt_log_8", ws_event} <= echo.delivered.get("hook", set()), timeout=15
        )
        await wait_until(
            lambda: {"evt_log_8", ws_event} <= echo.delivered.get("std", set()), timeout=15
        )

        # 6. SIGHUP with an invalid config that holds new secrets: rejected, the old one runs on.
        v3 = {
            "api_key": API_KEY,
            "account_secret": ACCOUNT_SECRET_3,
            "sink_secret": SINK_SECRET_2,
            "admin_token": ADMIN_TOKEN_3,
        }
        write_config(path, config(tmp_path, simulator, echo, **v3, shutdown_timeout="soon"))
        bridge.signal(signal.SIGHUP)
        await run.wait_log("config.reload_rejected")
        assert await run.post(event_body("evt_log_10"), ACCOUNT_SECRET_3) == 400
        assert await run.post(event_body("evt_log_11"), ACCOUNT_SECRET_2) == 200

        # 7. Stop.
        bridge.signal(signal.SIGTERM)
        assert await asyncio.to_thread(bridge.wait, 20) == 0

    stdout = bridge.proc.stdout.read().decode(errors="replace") if bridge.proc.stdout else ""
    text = bridge.stderr_path.read_text(errors="replace")
    lines = [*text.splitlines(), *stdout.splitlines()]
    entries = bridge.logs()

    # The run exercised what it claims to: every path that logs secrets' neighbours, every level.
    names = {e.get("event") for e in entries}
    for expected in (
        "ws.rejected",
        "ws.connected",
        "webhook.rejected",
        "event.accepted",
        "delivery.retrying",
        "delivery.sent",
        "config.reloaded",
        "config.reload_rejected",
        "bridge.stopped",
    ):
        assert expected in names, f"{expected} was never logged"
    assert {e.get("level") for e in entries} >= {"debug", "info", "warning", "error"}
    assert echo.signatures, "the receiver saw no signatures"
    # Echoed signatures and the token= URL reached the log, masked: the redaction was exercised.
    assert sum(logs.MASK in line for line in lines) >= 10
    assert len(lines) > 50

    signatures = {s for s in run.sent_signatures | echo.signatures if len(s) >= 16}
    leaks = [
        (what, number, line[:300])
        for number, line in enumerate(lines, 1)
        for what, value in [
            *SECRETS.items(),
            *(("signature", s) for s in signatures),
            *(("signature prefix", s[:16]) for s in signatures),
        ]
        if value in line
    ]
    assert leaks == []


# --- the redactor itself -----------------------------------------------------------------------


@pytest.fixture
def redactor() -> logs.Redactor:
    r = logs.Redactor()
    r.set_secrets(["registered-secret-0001", "x", "hunter22"])
    return r


@pytest.mark.parametrize(
    "text",
    [
        "GET /v1/ws?token=om_live_abc123 HTTP/1.1",
        "wss://api.openmail.sh/v1/ws?token=abc.def-ghi&inbox=1",
        "url='ws://127.0.0.1:8080/v1/ws?x=1&token=anything-at-all'",
        'connect to "wss://h/v1/ws?TOKEN=Zm9vYmFy" failed',
        "https://h/cb?access_token=anything-at-all",
    ],
)
def test_token_query_values_are_masked(redactor: logs.Redactor, text: str) -> None:
    scrubbed = redactor.scrub(text)
    value = text.lower().split("token=")[1]
    for end in "& '\"":
        value = value.split(end)[0]
    assert value not in scrubbed.lower()
    assert "token=***" in scrubbed.lower()


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi_jkl~mno+pqr/stu=",
        "authorization=bearer abcdefghijkl",
        "header was 'Bearer    eyJhbGciOiJIUzI1NiJ9.payload.sig'",
    ],
)
def test_bearer_tokens_are_masked(redactor: logs.Redactor, text: str) -> None:
    token = text.split()[-1].strip("'")
    scrubbed = redactor.scrub(text)
    assert token not in scrubbed
    assert "***" in scrubbed


@pytest.mark.parametrize(
    "key", ["om_live_0123456789abcdef", "om_test_demo_0000000000000000", "om_live_A_b_C_1"]
)
def test_openmail_api_keys_are_masked_anywhere(redactor: logs.Redactor, key: str) -> None:
    for text in (key, f"key={key}", f"the key {key} was revoked", f"('{key}',)", f"x:{key}\n"):
        scrubbed = redactor.scrub(text)
        assert key not in scrubbed
        assert "***" in scrubbed


def test_registered_secrets_are_masked_in_strings_exceptions_and_nested_values(
    redactor: logs.Redactor,
) -> None:
    secret = "registered-secret-0001"
    event_dict = redactor(
        None,
        "info",
        {
            "event": f"failed with {secret}",
            "error": ValueError(f"HMAC over {secret!r} did not match"),
            "detail": {
                "nested": [f"a {secret} b", (secret,)],
                "deeper": {"x": f"{secret}{secret}"},
            },
            "args": [RuntimeError(secret)],
            "short": "x",  # secrets under 4 characters are not registered: 'x' stays
        },
    )
    rendered = json.dumps(event_dict, default=str)
    assert secret not in rendered
    assert event_dict["error"] == "ValueError: HMAC over '***' did not match"
    assert event_dict["short"] == "x"
    assert event_dict["event"] == "failed with ***"


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apikey",
        "webhook_secret",
        "secret",
        "token",
        "X-Signature",
        "signature",
        "password",
        "Authorization",
        "admin_token",
    ],
)
def test_values_under_secret_named_keys_are_masked(redactor: logs.Redactor, key: str) -> None:
    event_dict = redactor(
        None, "info", {"event": "x", key: "plain-value-with-no-pattern", "nested": {key: 42}}
    )
    assert event_dict[key] == logs.MASK
    assert event_dict["nested"][key] == logs.MASK


def test_secret_set_replaces_the_previous_one(redactor: logs.Redactor) -> None:
    redactor.set_secrets(["new-secret-value"])
    assert redactor.scrub("registered-secret-0001 new-secret-value") == "registered-secret-0001 ***"


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(
        st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_."),
        min_size=4,
        max_size=40,
    ),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_a_registered_secret_never_survives_scrubbing(secret: str, before: str, after: str) -> None:
    r = logs.Redactor()
    r.set_secrets([secret])
    assert secret not in r.scrub(before + secret + after)
    assert secret not in r.scrub(f"{before}{secret}{after}{secret}")


@contextlib.contextmanager
def json_logging(level: str = "debug", fmt: str = "json") -> Iterator[io.StringIO]:
    """``logs.configure`` into a buffer (JSON unless ``fmt`` says otherwise); the previous
    configuration is restored afterwards."""
    stream = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    try:
        logs.configure(level, fmt, stream=stream)
        yield stream
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
        logs.REDACTOR.set_secrets(())


def test_configured_pipeline_masks_tracebacks_and_every_level() -> None:
    """Through the real processor chain: rendered tracebacks (exc_info) are scrubbed too."""
    secret = "pipeline-secret-9999"
    with json_logging() as stream:
        logs.REDACTOR.set_secrets([secret])
        log = structlog.get_logger("test")
        log.debug("d", value=secret)
        log.info("i", url=f"ws://h/v1/ws?token={secret}")
        log.warning("w", header=f"Bearer {secret}")
        try:
            raise ConnectionError(f"server said the key {secret} and om_live_abcdef123 are revoked")
        except ConnectionError:
            log.exception("boom")
        log.error("e", error=KeyError(secret))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5
    levels = [json.loads(line)["level"] for line in lines]
    assert levels == ["debug", "info", "warning", "error", "error"]
    assert "ConnectionError" in json.loads(lines[3])["exception"]  # the traceback is there...
    for line in lines:
        assert secret not in line  # ...but not the secret
        assert "om_live_abcdef123" not in line


async def post_signed(sup: Any, session: aiohttp.ClientSession, event_id: str) -> None:
    """Post one signed event to a running bridge's webhook listener; it answers 200."""
    assert sup.webhook is not None
    body, ts = event_body(event_id), str(int(time.time()))
    headers = {"X-Timestamp": ts, "X-Signature": sign(WEBHOOK_SECRET, ts, body)}
    url = f"http://127.0.0.1:{sup.webhook.port}/webhooks"
    async with session.post(url, data=body, headers=headers) as response:
        assert response.status == 200


async def test_credentials_in_http_sink_headers_never_reach_the_log(
    tmp_path: Path, echo: EchoReceiver
) -> None:
    basic = base64.b64encode(b"agent:sink-basic-password-9999").decode()
    api_key = "sink-header-api-key-9999"
    sink = {
        "type": "http",
        "url": echo.url("hook"),
        "retry": {"initial": "20ms", "max": "50ms"},
        "headers": {"Authorization": f"Basic {basic}", "X-Api-Key": api_key},
    }
    cfg = make_config(tmp_path, sinks={"hook": sink}, routes=[{"name": "all", "sinks": ["hook"]}])
    with json_logging() as stream:
        async with running_bridge(cfg) as sup, aiohttp.ClientSession() as session:
            await post_signed(sup, session, "evt_headers")
            await wait_until(lambda: "evt_headers" in echo.delivered.get("hook", set()), timeout=10)
    text = stream.getvalue()
    assert "delivery.retrying" in text
    leaked = [
        name for name, value in (("basic", basic), ("api key header", api_key)) if value in text
    ]
    assert leaked == []


async def test_a_capability_url_never_reaches_the_log_or_last_error(tmp_path: Path) -> None:
    """A Slack- or Zapier-style hook carries its credential in the URL's path."""
    token = "T0kenInPathZq8xW3vB5"
    sink = {
        "type": "http",
        "url": f"http://127.0.0.1:{free_port()}/hooks/catch/4711/{token}",  # nothing listens
        "retry": {"initial": "20ms", "max": "50ms"},
    }
    cfg = make_config(tmp_path, sinks={"hook": sink}, routes=[{"name": "all", "sinks": ["hook"]}])
    with json_logging() as stream:
        async with running_bridge(cfg) as sup, aiohttp.ClientSession() as session:
            await post_signed(sup, session, "evt_capability")
            worker = sup.running.dispatcher.workers["hook"] if sup.running else None
            assert worker is not None
            await wait_until(lambda: worker.state.last_error is not None)
            last_error = worker.state.last_error
    assert last_error is not None
    assert "/hooks/catch/4711/***" in last_error
    assert token not in last_error
    text = stream.getvalue()
    assert "delivery.retrying" in text
    assert token not in text


# --- URLs, the standard library's loggers, console tracebacks -----------------------------------


def test_url_credentials_and_secret_query_values_are_masked_in_a_log_line() -> None:
    url = "https://u:p@host/x?token=abc&api_key=def&page=2"
    with json_logging() as stream:
        structlog.get_logger("test").warning(f"cannot reach {url}", url=url)
    (line,) = stream.getvalue().splitlines()
    entry = json.loads(line)
    masked = "https://***@host/x?token=***&api_key=***&page=2"
    assert entry["url"] == masked
    assert entry["event"] == f"cannot reach {masked}"
    for value in ("u:p", "token=abc", "api_key=def"):
        assert value not in line


async def test_aiohttp_and_asyncio_records_come_out_as_redacted_json() -> None:
    """Records of the standard library's loggers, raised for real: an aiohttp handler that fails
    and an asyncio exception handler call, each quoting a secret and a URL with credentials."""
    secret = "stdlib-path-secret-4242"
    url = "nats://user:nats-password-1111@nats:4222/?token=query-token-2222"

    async def failing(request: web.Request) -> web.Response:
        raise RuntimeError(f"handler failed with {secret} at {url}")

    with json_logging() as stream:
        logs.REDACTOR.set_secrets([secret])
        app = web.Application()
        app.router.add_get("/", failing)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            port = runner.addresses[0][1]
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/") as response,
            ):
                assert response.status == 500
        finally:
            await runner.cleanup()
        asyncio.get_running_loop().call_exception_handler(
            {"message": f"callback failed near {url}", "exception": ValueError(secret)}
        )
    lines = stream.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON
    by_logger = {e.get("logger"): e for e in entries}
    assert {"aiohttp.server", "asyncio"} <= set(by_logger)
    for name in ("aiohttp.server", "asyncio"):
        entry = by_logger[name]
        assert entry["level"] == "error"
        assert "timestamp" in entry
        assert "Traceback" in entry["exception"] or "Error" in entry["exception"]
    assert "***" in by_logger["aiohttp.server"]["exception"]
    assert "nats://***@nats:4222/?token=***" in by_logger["asyncio"]["event"]
    for value in (secret, "nats-password-1111", "query-token-2222"):
        assert value not in stream.getvalue()


def _fail_with_a_local(secret: str) -> None:
    local_only = "unregistered-local-value-8642"  # a frame's locals must never be rendered
    raise ConnectionError(f"refused: {secret} via https://u:local-pw-7531@h/?key={local_only}")


def test_console_tracebacks_are_masked_and_show_no_locals() -> None:
    secret = "console-secret-3579"
    with json_logging(fmt="console") as stream:
        logs.REDACTOR.set_secrets([secret])
        try:
            _fail_with_a_local(secret)
        except ConnectionError:
            structlog.get_logger("test").exception("boom")
            logging.getLogger("asyncio").exception("stdlib boom")
    text = stream.getvalue()
    assert text.count("Traceback (most recent call last)") == 2  # the tracebacks are there...
    assert "_fail_with_a_local" in text
    for value in (secret, "local-pw-7531", "unregistered-local-value-8642"):
        assert value not in text  # ...but no secret, no URL credential, no local variable
    assert "https://***@h/?key=***" in text
    assert "[asyncio]" in text  # the stdlib record comes out in the same console format


# --- check's printout ----------------------------------------------------------------------------


def check(tmp_path: Path, data: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path / "bridge.yaml", data)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_masks_header_values_and_url_credentials(tmp_path: Path) -> None:
    """``check``'s output reaches the journal (the unit's ExecStartPre): no credential in it."""
    credentials = {
        "bearer": "bearer-token-xyz-9999",
        "api key header": "custom-api-key-4321",
        "plain header": "tenant-acme-1234",
        "url user": "agent-user",
        "url password": "url-password-1234",
        "url token": "url-token-5678",
        "ws password": "ws-password-2468",
        "ws query key": "ws-key-1357",
    }
    data = bridge_config_dict(tmp_path)
    data["openmail"]["websocket"] = {
        "enabled": True,
        "url": "wss://ws-user:ws-password-2468@openmail.example/v1/ws?api_key=ws-key-1357",
    }
    data["sinks"]["agent"] = {
        "type": "http",
        "url": "https://agent-user:url-password-1234@agent.example/hook?token=url-token-5678&p=2",
    }
    # Apart: credentials in the URL and an Authorization header together can never deliver.
    data["sinks"]["agent2"] = {
        "type": "http",
        "url": "https://agent.example/hook2",
        "headers": {
            "Authorization": "Bearer bearer-token-xyz-9999",
            "X-Api-Key": "custom-api-key-4321",
            "X-Tenant": "tenant-acme-1234",
        },
    }
    result = check(tmp_path, data)
    assert result.returncode == 0, result.stderr
    leaked = [
        what
        for what, value in credentials.items()
        if value in result.stdout or value in result.stderr
    ]
    assert leaked == []
    shown = json.loads(result.stdout)
    agent, agent2 = shown["sinks"]["agent"], shown["sinks"]["agent2"]
    assert agent2["headers"] == {"Authorization": "***", "X-Api-Key": "***", "X-Tenant": "***"}
    assert agent["url"] == "https://***@agent.example/hook?token=***&p=2"
    ws_url = shown["openmail"]["websocket"]["url"]
    assert ws_url == "wss://***@openmail.example/v1/ws?api_key=***"
    assert "warning" not in result.stderr  # wss:// and a loopback admin server: nothing unsafe


def test_check_warns_of_a_cleartext_websocket_and_an_open_admin_server(tmp_path: Path) -> None:
    data = bridge_config_dict(tmp_path, admin={"listen": f"0.0.0.0:{free_port()}"})
    data["openmail"]["websocket"] = {"enabled": True, "url": "ws://openmail.example/v1/ws"}
    result = check(tmp_path, data)
    assert result.returncode == 0, result.stderr  # unsafe, not invalid
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2, result.stderr
    assert "openmail.websocket.url: ws:// to openmail.example is not encrypted" in warnings[0]
    assert "API key travels in clear" in warnings[0]
    assert "admin.token: is not set" in warnings[1]
    assert "403" in warnings[1]


@pytest.mark.parametrize(
    "url", ["ws://127.0.0.1:9/v1/ws", "ws://localhost:9/v1/ws", "ws://[::1]:9/v1/ws"]
)
def test_check_does_not_warn_of_ws_to_loopback(tmp_path: Path, url: str) -> None:
    data = bridge_config_dict(tmp_path)
    data["openmail"]["websocket"] = {"enabled": True, "url": url}
    result = check(tmp_path, data)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


# --- last_error: in memory, in /status, in the database, in `dlq list` ----------------------------


@dataclass
class HeaderEcho:
    """A receiver that answers 400 quoting the whole request (line and headers) back."""

    port: int = 0
    seen: list[dict[str, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.seen.append(dict(request.headers))
        lines = [f"{request.method} {request.path_qs}"]
        lines += [f"{name}: {value}" for name, value in request.headers.items()]
        return web.Response(status=400, text="\n".join(lines))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_echoed_header_credentials_never_reach_last_error_status_or_the_dlq(
    tmp_path: Path,
) -> None:
    bearer, api_key, url_token = "bearer-xyz-0246813579", "custom-api-key-1357", "url-token-8642"
    receiver = HeaderEcho()
    await receiver.start()
    try:
        data = bridge_config_dict(
            tmp_path,
            sinks={
                "agent": {
                    "type": "http",
                    "url": f"http://127.0.0.1:{receiver.port}/hook?token={url_token}",
                    "headers": {"Authorization": f"Bearer {bearer}", "X-Api-Key": api_key},
                }
            },
            routes=[{"name": "all", "sinks": ["agent"]}],
        )
        path = write_config(tmp_path / "bridge.yaml", data)
        async with (
            running_bridge(make_config(tmp_path, **data)) as sv,
            aiohttp.ClientSession() as session,
        ):
            assert sv.webhook is not None
            body, ts = event_body("evt_echo"), str(int(time.time()))
            headers = {"X-Timestamp": ts, "X-Signature": sign(WEBHOOK_SECRET, ts, body)}
            url = f"http://127.0.0.1:{sv.webhook.port}/webhooks"
            async with session.post(url, data=body, headers=headers) as response:
                assert response.status == 200
            assert sv.dispatcher is not None
            worker = sv.dispatcher.workers["agent"]
            await wait_until(lambda: worker.state.dead == 1)
            admin_port = getattr(sv.admin, "port", None)
            async with session.get(f"http://127.0.0.1:{admin_port}/status") as response:
                status_text = await response.text()
            last_error = worker.state.last_error
        assert receiver.seen[0]["X-Api-Key"] == api_key  # the echo did quote them
        store = await Store.open(tmp_path / "state" / "bridge.db")
        try:
            (row,) = await store.dlq_list()
            stored = row.error
            # A row as an older version recorded it, unmasked: `dlq list` masks it on the way out.
            await store.dead_letter(
                row.delivery.id,
                error=f"HTTP 400: Authorization: Bearer {bearer} X-Api-Key: {api_key}",
                attempts=1,
            )
        finally:
            await store.close()
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge", "dlq", "list", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        await receiver.stop()
    assert listed.returncode == 0, listed.stderr
    assert last_error is not None
    assert last_error.startswith("HTTP 400 from http://127.0.0.1:")
    assert "evt_echo" in listed.stdout
    shown = {
        "last_error": last_error,
        "/status": status_text,
        "database": stored,
        "dlq list": listed.stdout,
    }
    leaks = [
        (where, value)
        for where, text in shown.items()
        for value in (bearer, api_key, url_token)
        if value in text
    ]
    assert leaks == []
    assert "X-Api-Key: ***" in last_error  # the echo is kept, its values masked
