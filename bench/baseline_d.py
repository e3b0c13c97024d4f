"""Baseline D: a minimal nats-py client that publishes each WebSocket event to JetStream and awaits
its PubAck before it reads the next frame: the limit of the "WebSocket in, JetStream out" path in
Python on this machine.

It receives the subscription as baseline C does (``bench.baseline_c.events``) and publishes each
frame's bytes unchanged to ``openmail.<inbox_id>.<event>`` with ``Nats-Msg-Id: <event_id>`` (what
the stream de-duplicates on), awaiting the PubAck. It keeps nothing: no spool, no cursor, no retry.

Usage: ``python -m bench.baseline_d WS_URL NATS_URL STREAM``; it runs until the server closes.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import nats

from bench.baseline_c import events


async def publish(ws_url: str, nats_url: str, stream: str) -> None:
    client = await nats.connect(nats_url)
    js = client.jetstream()
    try:
        async with aiohttp.ClientSession() as session:
            async for data, event in events(session, ws_url):
                await js.publish(
                    f"openmail.{event['inbox_id']}.{event['event']}",
                    data.encode(),
                    stream=stream,
                    headers={"Nats-Msg-Id": event["event_id"]},
                )
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(publish(sys.argv[1], sys.argv[2], sys.argv[3]))
