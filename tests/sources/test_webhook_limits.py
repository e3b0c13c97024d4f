"""The webhook listener's bounds against clients without a secret: raw sockets on 127.0.0.1.

Each test shows one bound holding: what is decided before the body is read, the byte budget, the
header and body timeouts, the connection cap, the cost of verification, strict JSON, and a log
that cannot be flooded. Waits are on sockets closing or answers arriving, never on a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import WEBHOOK_SECRET, events_named, wait_until
from sources.test_webhook import Hook, bridge_hook, event_body, sign, signed_headers

from bridge import protocol
from bridge.config.schema import WebhookConfig
from bridge.config.values import Secret

pytestmark = pytest.mark.timeout(60)


class Raw:
    """One client connection speaking raw HTTP/1.1, so a test controls every byte and pause."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, hook: Hook) -> Raw:
        assert hook.sup.webhook is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", hook.sup.webhook.port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def head(
        self, headers: dict[str, str], *, length: int | None, path: str = "/webhooks"
    ) -> None:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def answer(self, within: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body of the next response."""
        async with asyncio.timeout(within):
            status_line = await self.reader.readline()
            assert status_line, "the connection closed without an answer"
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers, body

    async def closed_by_server(self, within: float) -> bool:
        """True once the server closed (EOF or reset) within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    def close(self) -> None:
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def raw_clients() -> AsyncIterator[list[Raw]]:
    clients: list[Raw] = []
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


def fresh_headers(signature: str = "ab" * 32) -> dict[str, str]:
    """A fresh timestamp and a well-formed signature that matches nothing: what an attacker
    without a secret sends to make the listener read a body."""
    return {"X-Timestamp": str(int(time.time())), "X-Signature": signature}


def webhook(**options: Any) -> dict[str, Any]:
    return {"openmail": {"webhook": {"listen": "127.0.0.1:0", "secret": WEBHOOK_SECRET, **options}}}


# --- decided before the body is read -------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "length", "status", "reason"),
    [
        (fresh_headers(), 50 << 20, 413, "too_large"),
        ({"X-Timestamp": str(int(time.time()))}, 1 << 20, 400, "missing_signature"),
        (fresh_headers("not-a-hex-digest"), 1 << 20, 400, "bad_signature"),
        ({"X-Timestamp": "--5", "X-Signature": "ab" * 32}, 1 << 20, 400, "malformed_timestamp"),
        ({"X-Timestamp": "1", "X-Signature": "ab" * 32}, 1 << 20, 400, "stale_timestamp"),
    ],
    ids=["over-max-body", "no-signature", "signature-not-hex", "timestamp-double-minus", "stale"],
)
async def test_answered_from_the_headers_alone(
    tmp_path: Path, headers: dict[str, str], length: int, status: int, reason: str
) -> None:
    async with bridge_hook(tmp_path) as hook, raw_clients() as clients:
        clients.append(client := await Raw.open(hook))
        await client.head(headers, length=length)  # and not one byte of the body
        code, _, body = await client.answer()
        assert (code, hook.rejected(reason)) == (status, 1), body
        assert "error" in json.loads(body)
        assert hook.stored() == set()


async def test_a_timestamp_of_two_minus_signs_is_400_not_500(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path) as hook:
        body = event_body()
        headers = signed_headers(body)
        headers["X-Timestamp"] = "--5"
        code, data, _ = await hook.post(body, headers)
        assert code == 400, data
        assert hook.rejected("malformed_timestamp") == 1


# --- the byte budget -----------------------------------------------------------------------------


async def test_bodies_held_at_once_share_one_budget(tmp_path: Path) -> None:
    overrides = webhook(max_body="4KiB", max_buffered_bytes="8KiB")
    async with bridge_hook(tmp_path, **overrides) as hook, raw_clients() as clients:
        # Two requests whose bodies are still arriving hold the whole budget...
        for _ in range(2):
            clients.append(client := await Raw.open(hook))
            await client.head(fresh_headers(), length=4096)
            await client.send(b"{")
        await wait_until(lambda: _held(hook) == 8192)
        # ...so a third is refused before its body is read, and told when to come back.
        clients.append(third := await Raw.open(hook))
        await third.head(fresh_headers(), length=4096)
        code, headers, _ = await third.answer()
        assert (code, hook.rejected("busy")) == (503, 1)
        assert int(headers["retry-after"]) > 0
        # Once the held bodies are done (here: rejected for their signature), the budget is back.
        for client in clients[:2]:
            await client.send(b" " * 4095)
            assert (await client.answer())[0] == 400
        assert _held(hook) == 0
        body = event_body("evt_after_budget")
        code, data, _ = await hook.post(body, signed_headers(body))
        assert code == 200, data
        assert hook.stored() == {"evt_after_budget"}


def _held(hook: Hook) -> int:
    assert hook.sup.webhook is not None
    return hook.sup.webhook._budget.held


# --- timeouts and the connection cap -------------------------------------------------------------


async def test_a_client_that_never_finishes_its_headers_is_cut(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path, **webhook(header_timeout="300ms")) as hook:
        async with raw_clients() as clients:
            clients.append(client := await Raw.open(hook))
            await client.send(b"POST /webh")  # half a request line, then nothing
            assert await client.closed_by_server(within=5.0)
        assert hook.rejected("header_timeout") == 1
        # An honest request on a new connection is unaffected.
        body = event_body()
        assert (await hook.post(body, signed_headers(body)))[0] == 200


async def test_a_connection_that_sends_nothing_is_cut(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path, **webhook(header_timeout="300ms")) as hook:
        async with raw_clients() as clients:
            clients.append(client := await Raw.open(hook))
            assert await client.closed_by_server(within=5.0)
        assert hook.rejected("header_timeout") == 1


async def test_a_body_that_trickles_past_body_timeout_is_refused(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path, **webhook(body_timeout="300ms")) as hook:
        async with raw_clients() as clients:
            clients.append(client := await Raw.open(hook))
            await client.head(fresh_headers(), length=1000)
            await client.send(b'{"event_id":')
            code, _, _ = await client.answer()
            assert code == 408
        assert hook.rejected("body_timeout") == 1
        assert _held(hook) == 0


async def test_a_body_cut_short_of_its_content_length_is_refused(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path) as hook:
        async with raw_clients() as clients:
            clients.append(client := await Raw.open(hook))
            await client.head(fresh_headers(), length=1000)
            await client.send(b'{"event_id":')
            client.writer.write_eof()  # the client is done sending, 988 bytes short
            await wait_until(lambda: hook.rejected("bad_body") == 1)
        assert _held(hook) == 0


async def test_connections_beyond_the_cap_are_closed_at_once(tmp_path: Path) -> None:
    overrides = webhook(max_connections=2, header_timeout="30s")
    async with bridge_hook(tmp_path, **overrides) as hook, raw_clients() as clients:
        for _ in range(2):
            clients.append(await Raw.open(hook))
        assert hook.sup.webhook is not None
        await wait_until(lambda: _open(hook) == 2)
        clients.append(third := await Raw.open(hook))
        assert await third.closed_by_server(within=5.0)
        assert hook.rejected("max_connections") == 1
        # A slot freed is a slot usable again.
        clients[0].close()
        await wait_until(lambda: _open(hook) == 1)
        body = event_body("evt_in_a_freed_slot")
        code, data, _ = await hook.post(body, signed_headers(body))
        assert code == 200, data


def _open(hook: Hook) -> int:
    assert hook.sup.webhook is not None
    assert hook.sup.webhook._site is not None
    assert hook.sup.webhook._site.guard is not None
    return hook.sup.webhook._site.guard.open_connections


def test_max_connections_defaults_to_a_quarter_of_the_descriptors() -> None:
    config = WebhookConfig(secret=Secret("s" * 8))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert config.connection_limit == min(256, soft // 4)
    assert config.buffer_limit == 4 * config.max_body


# --- verification cost ---------------------------------------------------------------------------


async def test_per_inbox_secrets_try_only_the_claimed_inbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {f"inb_{i:02d}": f"whsec-inbox-{i:02d}-secret" for i in range(50)}
    overrides = {"openmail": {"webhook": {"secret": None, "secrets": secrets}}}
    tried: list[str] = []
    real_sign = protocol.sign

    def counting_sign(secret: str, timestamp: int | str, body: bytes) -> str:
        tried.append(secret)
        return real_sign(secret, timestamp, body)

    monkeypatch.setattr(protocol, "sign", counting_sign)
    async with bridge_hook(tmp_path, **overrides) as hook:
        forged = event_body("evt_forged", inbox_id="inb_07")
        code, _, _ = await hook.post(forged, fresh_headers())
        assert code == 400
        assert tried == [secrets["inb_07"]], "only the claimed inbox's secret is tried"
        tried.clear()
        body = event_body("evt_inbox_49", inbox_id="inb_49")
        code, data, _ = await hook.post(body, signed_headers(body, secrets["inb_49"]))
        assert code == 200, data
        assert tried == [secrets["inb_49"]]
        # Another inbox's secret never vouches for this inbox's event.
        body = event_body("evt_cross", inbox_id="inb_01")
        code, _, _ = await hook.post(body, signed_headers(body, secrets["inb_02"]))
        assert code == 400
    assert hook.stored() == {"evt_inbox_49"}


async def test_a_large_body_is_verified_off_the_event_loop(tmp_path: Path) -> None:
    overrides = webhook(offload_above="64KiB")
    async with bridge_hook(tmp_path, **overrides) as hook:
        threads: set[str] = set()
        real = protocol.signature_matches

        def recording(*args: Any) -> bool:
            threads.add(threading.current_thread().name)
            return real(*args)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(protocol, "signature_matches", recording)
            big = event_body("evt_big", pad="x" * (200 << 10))
            code, data, _ = await hook.post(big, signed_headers(big))
            assert code == 200, data
            assert threads
            assert "MainThread" not in threads
            threads.clear()
            small = event_body("evt_small")
            code, data, _ = await hook.post(small, signed_headers(small))
            assert code == 200, data
            assert threads == {"MainThread"}
        assert hook.stored() == {"evt_big", "evt_small"}


# --- strict input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"event_id":"evt_dup","event":"message.received","inbox_id":"inb_a","inbox_id":"inb_b"}',
        b'{"event_id":"evt_nan","event":"message.received","score":NaN}',
        b'{"event_id":"evt_inf","event":"message.received","score":-Infinity}',
        json.dumps({"event_id": "evt_" + "x" * 300, "event": "message.received"}).encode(),
    ],
    ids=["duplicate-key", "nan", "infinity", "long-event-id"],
)
async def test_signed_but_unsafe_json_is_refused(tmp_path: Path, body: bytes) -> None:
    async with bridge_hook(tmp_path) as hook:
        code, data, _ = await hook.post(body, signed_headers(body))
        assert code == 400, data
        assert hook.stored() == set()


# --- the log cannot be flooded -------------------------------------------------------------------


async def test_rejections_are_all_counted_but_logged_once_a_minute(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path) as hook:
        body = event_body()
        with structlog.testing.capture_logs() as logs:
            for _ in range(20):
                code, _, _ = await hook.post(body, fresh_headers())
                assert code == 400
        assert hook.rejected("bad_signature") == 20
        assert len(events_named(logs, "webhook.rejected")) == 1


def test_sign_is_openmails_scheme() -> None:
    # The counting wrapper above relies on protocol.sign being the one HMAC the listener runs.
    assert protocol.sign("k", 1, b"x") == sign("k", 1, b"x")
