"""What a connection to the webhook listener outlives: a success keeps it for the next request,
every refusal ends it, and a request aiohttp cannot parse is counted and logged once a minute,
not as an error with a traceback per attempt. Raw sockets on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog
from conftest import events_named
from sources.test_webhook import bridge_hook, event_body, signed_headers
from sources.test_webhook_limits import Raw, fresh_headers, raw_clients

pytestmark = pytest.mark.timeout(60)


def request(body: bytes, headers: dict[str, str], path: str = "/webhooks") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_success_keeps_its_connection_for_the_next_request(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path) as hook, raw_clients() as clients:
        clients.append(client := await Raw.open(hook))
        for n in (1, 2):
            body = event_body(f"evt_kept_{n}")
            await client.send(request(body, signed_headers(body)))
            code, headers, _ = await client.answer()
            assert code == 200
            assert headers.get("connection", "").lower() != "close"
        assert hook.stored() == {"evt_kept_1", "evt_kept_2"}


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/webhooks", fresh_headers(), 400),  # a forgery: the signature matches nothing
        ("/webhooks", {"X-Signature": "ab" * 32}, 400),  # no timestamp
        ("/elsewhere", fresh_headers(), 404),  # aiohttp's own answer
    ],
    ids=["forged", "no-timestamp", "other-path"],
)
async def test_a_refusal_ends_its_connection(
    tmp_path: Path, path: str, headers: dict[str, str], status: int
) -> None:
    # Kept alive, a connection whose requests are refused could be held by a client with no
    # secret for as long as it sent one within the keep-alive timeout.
    async with bridge_hook(tmp_path) as hook, raw_clients() as clients:
        clients.append(client := await Raw.open(hook))
        await client.send(request(event_body(), headers, path))
        code, answer_headers, _ = await client.answer()
        assert code == status
        assert answer_headers.get("connection", "").lower() == "close"
        assert await client.closed_by_server(within=5.0)


@pytest.mark.parametrize(
    "head",
    [
        "Content-Length: -1",
        "Content-Length: 5\r\nContent-Length: 7",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Bad\x01Header: x",
    ],
    ids=["negative-length", "two-lengths", "length-and-chunked", "control-in-name"],
)
async def test_a_request_aiohttp_cannot_parse_is_counted_and_logged_once_a_minute(
    tmp_path: Path, head: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with bridge_hook(tmp_path) as hook, raw_clients() as clients:
        with structlog.testing.capture_logs() as logs, caplog.at_level(logging.DEBUG):
            for _ in range(5):
                clients.append(client := await Raw.open(hook))
                await client.send(
                    f"POST /webhooks HTTP/1.1\r\nHost: x\r\n{head}\r\n\r\nhello".encode()
                )
                code, _, _ = await client.answer()
                assert code == 400
                assert await client.closed_by_server(within=5.0)
        assert hook.rejected("bad_request") == 5
        lines = events_named(logs, "webhook.bad_request")
        assert len(lines) == 1
        assert lines[0]["log_level"] == "warning"
        assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


async def test_expect_continue_is_refused_before_the_body_is_invited(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path) as hook, raw_clients() as clients:
        clients.append(client := await Raw.open(hook))
        await client.head({**fresh_headers(), "Expect": "100-continue"}, length=50 << 20)
        code, headers, _ = await client.answer()
        assert code == 413  # not "100 Continue" for 50 MiB it would then refuse
        assert headers.get("connection", "").lower() == "close"
        assert hook.rejected("too_large") == 1


async def test_expect_continue_for_a_good_request_invites_its_body(tmp_path: Path) -> None:
    async with bridge_hook(tmp_path) as hook, raw_clients() as clients:
        clients.append(client := await Raw.open(hook))
        body = event_body("evt_continued")
        await client.head({**signed_headers(body), "Expect": "100-continue"}, length=len(body))
        assert (await client.reader.readline()).startswith(b"HTTP/1.1 100 ")
        assert await client.reader.readline() == b"\r\n"
        await client.send(body)
        code, _, _ = await client.answer()
        assert code == 200
        assert hook.stored() == {"evt_continued"}
