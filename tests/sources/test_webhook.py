"""The webhook listener against real HTTP requests and a real SQLite spool.

Every bad input gets its own test with the exact status code, and each checks that nothing reached
the spool. Good inputs check the event is committed before the 200 arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import shutil
import sqlite3
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from conftest import (
    WEBHOOK_SECRET,
    make_config,
    read_lines,
    running_bridge,
    stored_ids,
    wait_until,
    webhook_of,
    writer_held,
)
from multidict import CIMultiDictProxy

from bridge.sources import webhook as webhook_module
from bridge.supervisor import Supervisor

ROUTE_ALL = [{"name": "all", "sinks": ["audit"]}]
INBOX_A, INBOX_B, INBOX_C = "inb_alpha", "inb_bravo", "inb_charlie"
SECRET_A, SECRET_B = "whsec-inbox-alpha-0003", "whsec-inbox-bravo-0004"


# --- helpers -------------------------------------------------------------------------------------


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """OpenMail's signature, written here independently of bridge.protocol."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def event_body(
    event_id: str | None = "evt_1", inbox_id: str | None = "inb_demo_support", **extra: Any
) -> bytes:
    payload: dict[str, Any] = {
        "event": "message.received",
        "occurred_at": "2026-02-24T10:05:00.000Z",
        "attempt": 1,
        "inbox_id": inbox_id,
        "thread_id": "thr_1",
        "message": {
            "id": "msg_1",
            "from": "a@example.com",
            "to": "support@openmail.sh",
            "subject": "hi",
            "body_text": "hello",
            "attachments": [],
        },
    }
    if event_id is not None:
        payload["event_id"] = event_id
    payload.update(extra)
    return json.dumps({k: v for k, v in payload.items() if v is not None}).encode()


def signed_headers(
    body: bytes,
    secret: str = WEBHOOK_SECRET,
    *,
    timestamp: int | None = None,
    event_id: str | None = None,
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "X-Timestamp": str(ts),
        "X-Signature": sign(secret, ts, body),
    }
    if event_id is not None:
        headers["X-Event-Id"] = event_id
    return headers


class Hook:
    """A running in-process bridge with webhook only, and a client session to post to it."""

    def __init__(
        self, sup: Supervisor, session: aiohttp.ClientSession, scheme: str = "http"
    ) -> None:
        self.sup = sup
        self.session = session
        assert sup.webhook is not None
        self.base = f"{scheme}://127.0.0.1:{sup.webhook.port}"
        self.url = self.base + sup.config.openmail.webhook.path
        self.db = Path(sup.config.state.path)

    async def post(
        self, body: bytes, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
        async with self.session.post(self.url, data=body, headers=headers or {}, **kwargs) as resp:
            data = await resp.json(content_type=None)
            return resp.status, data, resp.headers

    def stored(self) -> set[str]:
        return stored_ids(self.db)

    def rejected(self, reason: str) -> float:
        value = self.sup.metrics.registry.get_sample_value(
            "openmail_bridge_webhook_rejected_total", {"reason": reason}
        )
        return 0.0 if value is None else value


async def nothing_pending(hook: Hook) -> bool:
    assert hook.sup.store is not None
    return all(c.pending == 0 for c in (await hook.sup.store.sink_counts()).values())


@contextlib.asynccontextmanager
async def bridge_hook(tmp_path: Path, **overrides: Any) -> AsyncIterator[Hook]:
    overrides.setdefault("routes", ROUTE_ALL)
    async with (
        running_bridge(make_config(tmp_path, **overrides)) as sup,
        aiohttp.ClientSession() as s,
    ):
        yield Hook(sup, s)


@pytest.fixture
async def hook(tmp_path: Path) -> AsyncIterator[Hook]:
    async with bridge_hook(tmp_path) as h:
        yield h


async def assert_rejected(
    hook: Hook, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    code, data, _ = await hook.post(body, headers)
    assert code == status, data
    assert "error" in data
    assert hook.rejected(reason) == 1
    assert hook.stored() == set()
    assert hook.sup.metrics.events_received.labels("webhook")._value.get() == 0


# --- bad input: one test each, exact status, nothing stored --------------------------------------


async def test_bad_signature_is_400(hook: Hook) -> None:
    body = event_body()
    headers = signed_headers(body)
    headers["X-Signature"] = "0" * 64
    await assert_rejected(hook, body, headers, 400, "bad_signature")


async def test_signature_over_other_bytes_is_400(hook: Hook) -> None:
    """Signed over one body, sent with another: verification is on the raw bytes received."""
    headers = signed_headers(event_body("evt_signed"))
    await assert_rejected(hook, event_body("evt_tampered"), headers, 400, "bad_signature")


async def test_wrong_secret_is_400(hook: Hook) -> None:
    body = event_body()
    await assert_rejected(hook, body, signed_headers(body, "not-the-secret"), 400, "bad_signature")


async def test_stale_timestamp_is_400(hook: Hook) -> None:
    body = event_body()
    stale = int(time.time()) - 301  # tolerance is OpenMail's 300 s
    await assert_rejected(hook, body, signed_headers(body, timestamp=stale), 400, "stale_timestamp")


async def test_future_timestamp_is_400(hook: Hook) -> None:
    body = event_body()
    future = int(time.time()) + 400
    await assert_rejected(
        hook, body, signed_headers(body, timestamp=future), 400, "stale_timestamp"
    )


async def test_missing_timestamp_is_400(hook: Hook) -> None:
    body = event_body()
    headers = signed_headers(body)
    del headers["X-Timestamp"]
    await assert_rejected(hook, body, headers, 400, "missing_timestamp")


async def test_malformed_timestamp_is_400(hook: Hook) -> None:
    body = event_body()
    headers = signed_headers(body)
    headers["X-Timestamp"] = "yesterday"
    await assert_rejected(hook, body, headers, 400, "malformed_timestamp")


async def test_missing_signature_is_400(hook: Hook) -> None:
    body = event_body()
    headers = signed_headers(body)
    del headers["X-Signature"]
    await assert_rejected(hook, body, headers, 400, "missing_signature")


async def test_malformed_json_is_400(hook: Hook) -> None:
    body = b'{"event": "message.received", "event_id": "evt_1"'
    await assert_rejected(hook, body, signed_headers(body, event_id="evt_1"), 400, "malformed_json")


async def test_json_array_body_is_400(hook: Hook) -> None:
    body = b'[{"event": "message.received", "event_id": "evt_1"}]'
    await assert_rejected(hook, body, signed_headers(body, event_id="evt_1"), 400, "malformed_json")


async def test_no_event_id_in_body_or_header_is_400(hook: Hook) -> None:
    body = event_body(event_id=None)
    await assert_rejected(hook, body, signed_headers(body), 400, "no_event_id")


async def test_body_over_max_body_is_413(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path, openmail={"webhook": {"max_body": "512B"}}) as hook:
        body = event_body(padding="x" * 1024)
        await assert_rejected(hook, body, signed_headers(body), 413, "too_large")


async def test_chunked_body_over_max_body_is_413(tmp_path: Path) -> None:
    """No Content-Length to check up front: the limit applies while reading."""
    async with bridge_hook(tmp_path, openmail={"webhook": {"max_body": "512B"}}) as hook:
        body = event_body(padding="x" * 4096)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 256):
                yield body[i : i + 256]

        await assert_rejected(hook, chunks(), signed_headers(body), 413, "too_large")  # type: ignore[arg-type]


async def test_a_chunked_signed_body_is_read_whole_and_accepted(tmp_path: Path) -> None:
    """Without a Content-Length the body is read as it comes, up to max_body."""
    async with bridge_hook(tmp_path) as hook:
        body = event_body(padding="x" * 4096)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 256):
                yield body[i : i + 256]

        async with hook.session.post(hook.url, data=chunks(), headers=signed_headers(body)) as resp:
            assert resp.status == 200
        assert len(hook.stored()) == 1


async def test_a_reloaded_max_body_applies_to_chunked_bodies(tmp_path: Path) -> None:
    """The limit a reload sets holds for a body of unannounced length too, both ways."""
    body = event_body(padding="x" * 4096)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 256):
            yield body[i : i + 256]

    configs = [
        make_config(tmp_path, routes=ROUTE_ALL, openmail={"webhook": {"max_body": size}})
        for size in ("1KiB", "8KiB", "1KiB")
    ]
    sup = Supervisor(configs[0], reload_config=lambda: configs.pop(1))
    await sup.start()
    try:
        async with aiohttp.ClientSession() as session:
            hook = Hook(sup, session)
            assert await sup.reload()  # raised past the body: read whole and accepted
            async with session.post(hook.url, data=chunks(), headers=signed_headers(body)) as resp:
                assert resp.status == 200, await resp.text()
            assert len(hook.stored()) == 1
            assert await sup.reload()  # lowered under it again: refused while reading
            async with session.post(hook.url, data=chunks(), headers=signed_headers(body)) as resp:
                assert resp.status == 413
            assert hook.rejected("too_large") == 1
    finally:
        await sup.stop()


async def test_get_is_405(hook: Hook) -> None:
    async with hook.session.get(hook.url) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
    assert hook.rejected("method") == 1
    assert hook.stored() == set()


async def test_wrong_path_is_404(hook: Hook) -> None:
    body = event_body()
    async with hook.session.post(
        hook.base + "/not-webhooks", data=body, headers=signed_headers(body)
    ) as resp:
        assert resp.status == 404
    assert hook.stored() == set()


async def test_spool_full_is_503(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path, state={"max_bytes": "64B"}) as hook:
        body = event_body()
        code, data, headers = await hook.post(body, signed_headers(body))
        assert code == 503, data
        assert int(headers["Retry-After"]) > 0
        assert hook.rejected("spool_full") == 1
        assert hook.stored() == set()


async def test_stopping_is_503(hook: Hook) -> None:
    assert hook.sup.webhook is not None
    hook.sup.webhook.begin_stop()  # what Supervisor.stop() does first
    body = event_body()
    await assert_rejected(hook, body, signed_headers(body), 503, "stopping")


async def test_a_commit_slower_than_the_answer_bound_is_503_and_still_lands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's writer busy past the bound: 503 "timeout", nothing acknowledged; the commit
    lands all the same, and OpenMail's retry is then a duplicate."""
    monkeypatch.setattr(webhook_module, "ANSWER_WITHIN", 0.2)
    async with bridge_hook(tmp_path) as hook:
        assert hook.sup.store is not None
        body = event_body("evt_slow_commit")
        async with writer_held(hook.sup.store):
            code, data, _ = await hook.post(body, signed_headers(body))
            assert code == 503, data
            assert "did not commit in time" in data["error"]
            assert hook.rejected("timeout") == 1
            assert hook.stored() == set()
        await wait_until(lambda: hook.stored() == {"evt_slow_commit"})
        code, data, _ = await hook.post(body, signed_headers(body))
        assert (code, data["duplicate"]) == (200, True), data


async def test_stop_is_not_held_by_a_request_still_arriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose body is still arriving when the bridge stops gets no 200, nothing is
    stored, and it holds the stop no longer than the commit bound (aiohttp's own is 60 s)."""
    monkeypatch.setattr(webhook_module, "ANSWER_WITHIN", 0.5)
    reading = asyncio.Event()
    read_body = webhook_module.WebhookSource._read_body

    async def reading_body(source: webhook_module.WebhookSource, request: Any) -> bytes:
        reading.set()  # the real method runs: this only says the handler got this far
        return await read_body(source, request)

    monkeypatch.setattr(webhook_module.WebhookSource, "_read_body", reading_body)
    async with bridge_hook(tmp_path) as hook:
        body = event_body("evt_inflight")
        release = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            yield body[:10]
            await release.wait()
            yield body[10:]

        post = asyncio.create_task(hook.post(slow_body(), signed_headers(body)))  # type: ignore[arg-type]
        await reading.wait()  # the handler is running, waiting for the rest of the body
        started = time.monotonic()
        stopper = asyncio.create_task(hook.sup.stop())
        assert hook.sup.webhook is not None
        await wait_until(lambda: not webhook_of(hook.sup).receiving)
        release.set()
        await stopper
        assert time.monotonic() - started < 3.0
        with pytest.raises(aiohttp.ClientError):
            await post
        assert hook.stored() == set()


# --- good input ----------------------------------------------------------------------------------


async def test_header_only_event_id_is_accepted(hook: Hook) -> None:
    body = event_body(event_id=None)
    code, data, _ = await hook.post(body, signed_headers(body, event_id="evt_from_header"))
    assert code == 200
    assert data == {"ok": True, "event_id": "evt_from_header", "duplicate": False}
    assert hook.stored() == {"evt_from_header"}


async def test_header_disagreeing_with_body_is_logged_not_rejected(hook: Hook) -> None:
    body = event_body("evt_body")
    with structlog.testing.capture_logs() as logs:
        code, data, _ = await hook.post(body, signed_headers(body, event_id="evt_header"))
    assert code == 200
    assert data["event_id"] == "evt_body"  # the body's id is the dedup key
    assert hook.stored() == {"evt_body"}
    mismatch = [e for e in logs if e["event"] == "webhook.event_id_mismatch"]
    assert len(mismatch) == 1
    assert mismatch[0]["event_id"] == "evt_body"
    assert mismatch[0]["header_event_id"] == "evt_header"


async def test_duplicate_is_200_and_stored_once(hook: Hook, tmp_path: Path) -> None:
    first = event_body("evt_dup", attempt=1)
    retry = event_body("evt_dup", attempt=2)  # OpenMail's retry: new bytes, new signature
    code1, data1, _ = await hook.post(first, signed_headers(first, event_id="evt_dup"))
    code2, data2, _ = await hook.post(retry, signed_headers(retry, event_id="evt_dup"))
    assert (code1, data1["duplicate"]) == (200, False)
    assert (code2, data2["duplicate"]) == (200, True)
    assert hook.stored() == {"evt_dup"}
    assert hook.sup.metrics.events_duplicate.labels("webhook")._value.get() == 1
    await wait_until(lambda: len(read_lines(tmp_path / "events.jsonl")) >= 1)
    # Both answers came after their commits; once no row is pending, a second delivery, if there
    # were one, has landed.
    await wait_until(lambda: nothing_pending(hook))
    assert [line["event_id"] for line in read_lines(tmp_path / "events.jsonl")] == ["evt_dup"]


async def test_concurrent_duplicates_are_stored_once(hook: Hook) -> None:
    bodies = [event_body("evt_race", attempt=n) for n in range(1, 9)]
    results = await asyncio.gather(*(hook.post(b, signed_headers(b)) for b in bodies))
    assert [code for code, _, _ in results] == [200] * 8
    assert sum(not data["duplicate"] for _, data, _ in results) == 1
    assert hook.stored() == {"evt_race"}


@pytest.mark.parametrize(
    ("payload", "stored_type"),
    [
        pytest.param(
            {
                "event": "inbox.suspended",
                "event_id": "evt_life",
                "inbox_id": "inb_demo_support",
                "inbox_address": "support@openmail.sh",
                "pod_id": "pod_1",
                "reason": "high_bounce_rate",
            },
            "inbox.suspended",
            id="lifecycle",
        ),
        pytest.param(
            {"event": "message.carrier_pigeon", "event_id": "evt_new"},
            "message.carrier_pigeon",
            id="unknown-type",
        ),
        pytest.param(
            {"event_id": "evt_test", "note": "webhook test"}, "unknown", id="no-event-field"
        ),
    ],
)
async def test_every_verified_event_is_accepted(
    hook: Hook, payload: dict[str, Any], stored_type: str
) -> None:
    body = json.dumps(payload).encode()
    code, data, _ = await hook.post(body, signed_headers(body))
    assert code == 200, data
    conn = sqlite3.connect(f"file:{hook.db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT event_id, type FROM events").fetchall()
        seen = conn.execute("SELECT event_id FROM seen").fetchall()
    finally:
        conn.close()
    assert seen == [(payload["event_id"],)]
    # The row may already be delivered and gone; while it is held its type is recorded.
    assert rows in ([], [(payload["event_id"], stored_type)])


async def test_answers_200_only_after_commit(hook: Hook) -> None:
    """When a 200 arrives the event is already in the database, as another reader sees it."""

    async def post_and_check(n: int) -> None:
        body = event_body(f"evt_commit_{n}")
        code, _, _ = await hook.post(body, signed_headers(body))
        assert code == 200
        assert f"evt_commit_{n}" in hook.stored()  # checked before anything else can run

    await asyncio.gather(*(post_and_check(n) for n in range(20)))
    assert hook.stored() == {f"evt_commit_{n}" for n in range(20)}


async def test_store_unavailable_is_503(hook: Hook) -> None:
    """A store that cannot write: 503, nothing acknowledged (the write failure is the store's)."""
    assert hook.sup.store is not None
    await hook.sup.store.close()  # every later write fails with StoreError
    body = event_body()
    code, data, _ = await hook.post(body, signed_headers(body))
    assert code == 503, data
    assert hook.rejected("store_unavailable") == 1


# --- secrets -------------------------------------------------------------------------------------


@pytest.fixture
async def per_inbox(tmp_path: Path) -> AsyncIterator[Hook]:
    webhook = {"secret": WEBHOOK_SECRET, "secrets": {INBOX_A: SECRET_A, INBOX_B: SECRET_B}}
    async with bridge_hook(tmp_path, openmail={"webhook": webhook}) as h:
        yield h


@pytest.mark.parametrize("secret", [SECRET_A, WEBHOOK_SECRET], ids=["own-inbox", "account"])
async def test_inbox_event_verifies_with_its_own_or_the_account_secret(
    per_inbox: Hook, secret: str
) -> None:
    body = event_body("evt_a", inbox_id=INBOX_A)
    code, data, _ = await per_inbox.post(body, signed_headers(body, secret))
    assert code == 200, data
    assert per_inbox.stored() == {"evt_a"}


@pytest.mark.parametrize(
    ("inbox_id", "secret"),
    [
        pytest.param(INBOX_A, SECRET_B, id="a-signed-with-b"),
        pytest.param(INBOX_B, SECRET_A, id="b-signed-with-a"),
        pytest.param(INBOX_C, SECRET_A, id="unlisted-inbox-signed-with-a"),
        pytest.param(None, SECRET_A, id="no-inbox-signed-with-a"),
    ],
)
async def test_inbox_secret_never_verifies_another_inbox(
    per_inbox: Hook, inbox_id: str | None, secret: str
) -> None:
    body = event_body("evt_x", inbox_id=inbox_id)
    await assert_rejected(per_inbox, body, signed_headers(body, secret), 400, "bad_signature")


async def test_an_inbox_secret_for_an_inbox_named_only_inside_the_body_verifies_nothing(
    per_inbox: Hook,
) -> None:
    """The inboxes the bytes name pick the secrets to try; the event must claim that inbox."""
    body = json.dumps(
        {"event_id": "evt_n", "inbox_id": INBOX_B, "message": {"inbox_id": INBOX_A}}
    ).encode()
    await assert_rejected(per_inbox, body, signed_headers(body, SECRET_A), 400, "bad_signature")


async def test_with_inbox_secrets_a_forged_body_is_refused_before_it_is_parsed(
    per_inbox: Hook,
) -> None:
    """Nothing unverified is decoded: a forged body that is not JSON is a bad signature, never
    malformed JSON, and a forged one that is costs a byte search, not a parse."""
    forged = b"not json at all"
    await assert_rejected(
        per_inbox, forged, signed_headers(forged, "no-such-secret"), 400, "bad_signature"
    )
    many = b'[{"inbox_id":"' + INBOX_A.encode() + b'"},' + b"{}," * 100_000 + b"{}]"
    code, _, _ = await per_inbox.post(many, signed_headers(many, "no-such-secret"))
    assert code == 400
    assert per_inbox.rejected("bad_signature") == 2
    assert per_inbox.rejected("malformed_json") == 0


async def test_two_inboxes_sharing_a_secret_each_verify(tmp_path: Path) -> None:
    """Two inbox webhooks configured with the same secret: each inbox's events still verify."""
    webhook = {"secrets": {INBOX_A: SECRET_A, INBOX_B: SECRET_A}}
    async with bridge_hook(tmp_path, openmail={"webhook": webhook}) as hook:
        for n, inbox in enumerate((INBOX_A, INBOX_B)):
            body = event_body(f"evt_shared_{n}", inbox_id=inbox)
            code, data, _ = await hook.post(body, signed_headers(body, SECRET_A))
            assert code == 200, (inbox, data)
        assert hook.stored() == {"evt_shared_0", "evt_shared_1"}


async def test_secrets_list_rotation_both_verify(tmp_path: Path) -> None:
    old, new = "whsec-rotation-old-0005", "whsec-rotation-new-0006"
    async with bridge_hook(
        tmp_path, openmail={"webhook": {"secret": None, "secrets": [old, new]}}
    ) as hook:
        for n, secret in enumerate((old, new)):
            body = event_body(f"evt_rot_{n}")
            code, _, _ = await hook.post(body, signed_headers(body, secret))
            assert code == 200
        body = event_body("evt_rot_bad")
        code, _, _ = await hook.post(body, signed_headers(body, WEBHOOK_SECRET))
        assert code == 400
        assert hook.stored() == {"evt_rot_0", "evt_rot_1"}


def _strings(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple | set):
        for v in value:
            yield from _strings(v)
    else:
        yield str(value)


async def test_no_secret_or_signature_in_logs(tmp_path: Path) -> None:
    """capture_logs sees what call sites pass, before redaction: nothing secret may be there."""
    webhook = {"secret": WEBHOOK_SECRET, "secrets": {INBOX_A: SECRET_A, INBOX_B: SECRET_B}}
    sent: list[str] = [WEBHOOK_SECRET, SECRET_A, SECRET_B]
    with structlog.testing.capture_logs() as logs:
        async with bridge_hook(tmp_path, openmail={"webhook": webhook}) as hook:
            cases = [
                (event_body("evt_ok", inbox_id=INBOX_A), SECRET_A, None),
                (event_body("evt_cross", inbox_id=INBOX_A), SECRET_B, None),
                (event_body("evt_wrong"), "whsec-guess-0007", None),
                (event_body("evt_stale"), WEBHOOK_SECRET, int(time.time()) - 1000),
                (b"not json", WEBHOOK_SECRET, None),
                (event_body("evt_hdr"), WEBHOOK_SECRET, None),
            ]
            for body, secret, ts in cases:
                headers = signed_headers(body, secret, timestamp=ts, event_id="evt_other_header")
                sent.append(headers["X-Signature"])
                await hook.post(body, headers)
            assert hook.stored() == {"evt_ok", "evt_hdr"}
    assert {e["event"] for e in logs} >= {"webhook.rejected", "event.accepted"}
    text = [s for entry in logs for s in _strings(entry)]
    for value in sent:
        leaks = [s for s in text if value in s]
        assert not leaks, f"secret or signature logged: {leaks}"


# --- TLS -----------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return cert, key
    import datetime
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
    from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
    from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


async def test_tls_serves_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config = make_config(
        tmp_path,
        routes=ROUTE_ALL,
        openmail={"webhook": {"tls": {"cert": str(cert), "key": str(key)}}},
    )
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with running_bridge(config) as sup, aiohttp.ClientSession() as session:
        hook = Hook(sup, session, scheme="https")
        body = event_body("evt_tls")
        code, data, _ = await hook.post(body, signed_headers(body), ssl=client_ctx)
        assert code == 200, data
        assert hook.stored() == {"evt_tls"}
        # Plain HTTP to the TLS port gets no answer a webhook sender would take for success.
        plain = hook.url.replace("https://", "http://")
        with pytest.raises(aiohttp.ClientError):
            async with session.post(plain, data=body, headers=signed_headers(body)):
                pass
