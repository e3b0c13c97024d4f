"""The NATS client's connection set-up. A bridge that asks for TLS to NATS (``nats.tls``, a
``tls://`` URL) never sends its credentials to a server that does not require TLS: nats-py alone
would go on in plaintext. And a stop in the middle of a connect does not hang.

The server here is a listener on 127.0.0.1 answering as a NATS server without TLS would (its INFO
line), and recording whatever the client sends after it.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator

import nats.errors
import pytest
from nats.aio.client import Client

from bridge.config import NatsConfig
from bridge.metrics import Metrics
from bridge.nats import connection
from bridge.nats.options import TlsEnforcingClient

TOKEN = "s3cr3t-token-xyz"
INFO = {"server_id": "PLAIN", "version": "2.10.0", "proto": 1, "max_payload": 1 << 20,
        "headers": True, "auth_required": True}  # fmt: skip


class PlainServer:
    """Answers every connection with INFO (no ``tls_required``) and keeps what it is sent."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + json.dumps(INFO).encode() + b"\r\n")
        await writer.drain()
        try:
            while chunk := await reader.read(4096):
                self.received += chunk
                if b"CONNECT" in self.received:
                    writer.write(b"-ERR 'Authorization Violation'\r\n")
                    await writer.drain()
                    break
        finally:
            writer.close()

    async def __aenter__(self) -> PlainServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def plain() -> AsyncIterator[PlainServer]:
    async with PlainServer() as server:
        yield server


async def connect(client: Client, url: str, **options: object) -> None:
    async def quiet(_: Exception) -> None:
        """nats-py reports each failure here as well as raising it."""

    try:
        await client.connect(
            servers=[url],
            token=TOKEN,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            connect_timeout=2,
            error_cb=quiet,
            **options,  # type: ignore[arg-type]
        )
    finally:
        if client._transport is not None:  # the stock client leaves a failed one open
            client._transport.close()
            await client._transport.wait_closed()


@pytest.mark.parametrize(
    ("scheme", "tls"),
    [("tls", None), ("nats", ssl.create_default_context()), ("tls", ssl.create_default_context())],
)
async def test_no_credential_reaches_a_server_without_tls(
    plain: PlainServer, scheme: str, tls: ssl.SSLContext | None
) -> None:
    client = TlsEnforcingClient()
    options = {} if tls is None else {"tls": tls}
    with pytest.raises(nats.errors.Error, match="does not require TLS"):
        await connect(client, f"{scheme}://127.0.0.1:{plain.port}", **options)
    assert TOKEN.encode() not in plain.received
    assert b"CONNECT" not in plain.received


async def test_nats_py_alone_would_send_the_token_in_clear(plain: PlainServer) -> None:
    """What the check is for: the same server, the stock client, a tls:// URL."""
    with pytest.raises(nats.errors.Error):
        await connect(Client(), f"tls://127.0.0.1:{plain.port}")
    assert TOKEN.encode() in plain.received


async def test_without_tls_asked_for_the_client_connects_as_before(plain: PlainServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization"):
        await connect(TlsEnforcingClient(), f"nats://127.0.0.1:{plain.port}")
    assert b"CONNECT" in plain.received


async def test_a_stop_while_connecting_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge whose start fails stops its NATS connection at once, perhaps in the middle of a
    connect that waits for the server: nats-py's close never returns for such a client, and the
    stop must not wait on it for ever."""
    monkeypatch.setattr(connection, "CLOSE_TIMEOUT", 0.2)
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()  # and never says INFO
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = NatsConfig(servers=(f"nats://127.0.0.1:{port}",), connect_timeout=30.0)
    nats_connection = connection.NatsConnection(config, Metrics())
    try:
        await nats_connection.start()
        async with asyncio.timeout(10):
            await accepted.wait()
        async with asyncio.timeout(10):  # without the bound: for ever
            await nats_connection.stop()
        assert nats_connection.state is connection.ConnectionState.CLOSED
    finally:
        server.close()
        await server.wait_closed()
