"""The observer of the rows that end in JetStream: it follows the stream and records when each
event is in it.

Usage: ``python -m bench.stream_tail NATS_URL STREAM RECEIPTS``, run in its own process so it
never shares the measured client's event loop. It reads the stream through an ordered consumer
(a message reaches it only once the stream has stored it) and appends, per message, the receipt
line of ``bench.receiver`` (event id, monotonic time of arrival) to ``RECEIPTS``. Once subscribed
it logs ``{"event": "stream_tail.subscribed", "listen": "HOST:PORT"}`` (the server it reads from)
to stderr; it runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.parse

import nats
from nats.aio.msg import Msg

from bench.events import EVENT_ID_RE
from bench.jetstream import STREAM, TAIL_READY
from bench.receiver import receipt_line


async def tail(url: str, stream: str, receipts: int) -> None:
    async def land(msg: Msg) -> None:
        received_ns = time.monotonic_ns()
        match = EVENT_ID_RE.search(msg.data)
        if match is not None:
            os.write(receipts, receipt_line(match.group(1), match.group(2), received_ns))

    client = await nats.connect(url, connect_timeout=5)
    try:
        await client.jetstream().subscribe(
            STREAM.subjects[0], stream=stream, ordered_consumer=True, cb=land
        )
        where = urllib.parse.urlsplit(url).netloc
        print(json.dumps({"event": TAIL_READY, "listen": where}), file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await client.close()


def main() -> None:
    url, stream, path = sys.argv[1:4]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        asyncio.run(tail(url, stream, fd))
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
