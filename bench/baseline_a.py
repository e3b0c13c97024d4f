"""Baseline A: a minimal aiohttp WebSocket client that receives and json-parses each event, nothing
more: the practical limit of the ingest path on this machine.

Usage: ``python -m bench.baseline_a WS_URL DUMP``. It keeps no event; for the latency columns it
records each event's arrival time (8 bytes) and writes them to ``DUMP`` once the server closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from array import array
from pathlib import Path

import aiohttp


async def listen(url: str) -> array[int]:
    """Receive until the server closes; the arrival time of every event, in arrival order."""
    arrivals = array("q")
    headers = {"Authorization": f"Bearer {os.environ.get('OPENMAIL_API_KEY', 'om_bench')}"}
    async with aiohttp.ClientSession() as session, session.ws_connect(url, headers=headers) as ws:
        await ws.send_str('{"type":"subscribe"}')
        async for message in ws:
            if message.type is aiohttp.WSMsgType.TEXT and "event" in json.loads(message.data):
                arrivals.append(time.monotonic_ns())
    return arrivals


if __name__ == "__main__":
    Path(sys.argv[2]).write_bytes(asyncio.run(listen(sys.argv[1])).tobytes())
