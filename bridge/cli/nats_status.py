"""``nats-status``: the stream's and the consumer's state, read from NATS with the config's
``nats:`` section (a bounded connection attempt; credentials never printed).

A stream or consumer that does not exist yet is part of the answer, not a failure: a bridge
creates the stream when it first connects, a sidecar its consumer when it first starts. Exit 1
means NATS itself could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable
from typing import Final, TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerInfo, StreamInfo

from bridge import redact
from bridge.cli.daemon_config import daemon_config
from bridge.cli.exit_codes import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from bridge.config import NatsConfig
from bridge.nats.connection import AUTH_HINT, credentials, is_auth_error
from bridge.nats.options import TlsEnforcingClient, connect_options

_Info = TypeVar("_Info", StreamInfo, ConsumerInfo)
NOT_YET: Final = {
    "stream": "does not exist yet: a bridge creates it when it first connects",
    "consumer": "does not exist yet: the sidecar creates it when it first starts",
}
"""What ``nats-status`` says of a stream or consumer the server does not have."""


async def _found(request: Awaitable[_Info]) -> _Info | None:
    """The server's answer; None when it has no such stream or consumer (404)."""
    try:
        return await request
    except nats.js.errors.NotFoundError:
        return None


async def _read(
    nats_config: NatsConfig,
) -> tuple[str, StreamInfo | None, ConsumerInfo | None]:
    client = TlsEnforcingClient()

    async def quiet(_: Exception) -> None:
        """Errors are reported once, by the caller; nats-py would print each one."""

    options = connect_options(nats_config)
    options["allow_reconnect"] = False
    # A limit, not 0, which nats-py reads as "no limit": it would try for ever. With 1 it tries
    # each server twice (reconnect_wait apart), then gives up with NoServersError.
    options["max_reconnect_attempts"] = 1
    await client.connect(error_cb=quiet, **options)
    try:
        url = client.connected_url
        server = redact.mask_url(url.geturl()) if url is not None else "?"
        js = client.jetstream()
        stream = await _found(js.stream_info(nats_config.stream.name))
        consumer = None
        if stream is not None and nats_config.consume is not None:
            name = nats_config.consume.consumer
            consumer = await _found(js.consumer_info(nats_config.stream.name, name))
        return server, stream, consumer
    finally:
        await client.close()


def report(
    nats_config: NatsConfig, server: str, stream: StreamInfo | None, consumer: ConsumerInfo | None
) -> dict[str, object]:
    """What ``nats-status`` shows. A stream or a configured consumer the server does not have
    is ``{"name": ..., "exists": false}``."""
    out: dict[str, object] = {
        "server": server,
        "stream": {"name": nats_config.stream.name, "exists": False},
        "consumer": None,
    }
    if nats_config.consume is not None:
        out["consumer"] = {"name": nats_config.consume.consumer, "exists": False}
    if stream is None:
        return out
    state = stream.state
    out["stream"] = {
        "name": stream.config.name,
        "exists": True,
        "subjects": stream.config.subjects,
        "replicas": stream.config.num_replicas,
        "duplicate_window": stream.config.duplicate_window,
        "max_age": stream.config.max_age,
        "messages": state.messages,
        "bytes": state.bytes,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
        "consumers": state.consumer_count,
    }
    if consumer is not None:
        out["consumer"] = {
            "name": consumer.name,
            "exists": True,
            "pending": consumer.num_pending,
            "ack_pending": consumer.num_ack_pending,
            "redelivered": consumer.num_redelivered,
            "delivered_seq": consumer.delivered.stream_seq if consumer.delivered else None,
            "ack_floor_seq": consumer.ack_floor.stream_seq if consumer.ack_floor else None,
        }
    return out


def cmd_nats_status(args: argparse.Namespace) -> int:
    config = daemon_config(args)
    nats_config = config.nats
    if nats_config is None:
        print("openmail-bridge: the config has no nats: section", file=sys.stderr)
        return EXIT_CONFIG
    servers = ", ".join(redact.mask_url(s) for s in nats_config.servers)
    try:
        server, stream, consumer = asyncio.run(_read(nats_config))
    except Exception as exc:  # every failure is reported the same way: what, and where
        error = redact.scrub_text(str(exc) or type(exc).__name__, credentials(nats_config))
        if is_auth_error(exc):
            error = f"the server refused the credentials ({AUTH_HINT})"
        elif isinstance(exc, nats.errors.NoServersError):
            error = "no server answers"
        elif isinstance(exc, TimeoutError):  # nats-py's own TimeoutError is one too
            error = "no answer in time: the server takes connections but answers nothing "
            error += "(stopped, or overloaded)"
        print(f"openmail-bridge: NATS at {servers}: {error}", file=sys.stderr)
        return EXIT_FAILURE
    shown = report(nats_config, server, stream, consumer)
    if args.json:
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    print(_format(shown))
    return EXIT_OK


def _format(shown: dict[str, object]) -> str:
    lines = [f"server: {shown['server']}"]
    for section in ("stream", "consumer"):
        value = shown[section]
        if not isinstance(value, dict):
            continue
        if not value.get("exists"):
            lines.append(f"{section}: {value.get('name')} {NOT_YET[section]}")
            continue
        lines.append(f"{section}:")
        lines += [f"  {key}: {item}" for key, item in value.items() if key != "exists"]
    return "\n".join(lines)
