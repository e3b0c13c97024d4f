"""Baseline C: a minimal forwarder that works the way OpenMail's own CLI bridge does.

It holds the WebSocket subscription and, for each frame, parses it and POSTs the event to a hook
URL with one keep-alive aiohttp session, awaiting the answer before it reads the next frame. It
keeps nothing: no spool, no cursor, no retry, no signature. What it costs per event is the
practical floor of "WebSocket in, HTTP out" in Python on this machine.

Usage: ``python -m bench.baseline_c WS_URL HOOK_URL``; it runs until the server closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


async def events(session: aiohttp.ClientSession, ws_url: str) -> AsyncIterator[tuple[str, Any]]:
    """Each event of the subscription, as received and parsed, until the server closes."""
    headers = {"Authorization": f"Bearer {os.environ.get('OPENMAIL_API_KEY', 'om_bench')}"}
    async with session.ws_connect(ws_url, headers=headers) as ws:
        await ws.send_str('{"type":"subscribe"}')
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            if "event" not in event:
                continue  # a control frame: subscribed, pong
            yield message.data, event


async def forward(ws_url: str, hook_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async for _, event in events(session, ws_url):
            async with session.post(hook_url, json=event) as response:
                await response.read()


if __name__ == "__main__":
    asyncio.run(forward(sys.argv[1], sys.argv[2]))
