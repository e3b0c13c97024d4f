"""The hook receiver of the HTTP-forwarding rows: a local aiohttp server that answers each POST.

Usage: ``python -m bench.receiver RECEIPTS [--secret SECRET] [--refuse]``, run in its own process
so it never shares the measured client's CPU. It logs one JSON line to stderr once it listens
(``{"event": "receiver.listening", "listen": "127.0.0.1:PORT"}``, the shape of the bridge's own
``*.listening`` lines). For each event it answers 200, it appends
``{"event_id": ..., "received_ns": ...}`` to ``RECEIPTS``: the moment the request was in, on the
monotonic clock every process shares, so latency runs from the load server's send to here.

``--secret``: a POST must carry OpenMail's signature under that secret (``X-Timestamp``,
``X-Signature``), else 401, so the bridge's re-signing is checked, not assumed. ``--refuse``: answer
503 until ``POST /accept`` (whose answer is the monotonic time of the switch), for the backlog row.
:class:`ReceiverProcess` is the harness's side: start it, know its URL, switch it, stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Final

import aiohttp
from aiohttp import web

from bench.events import EVENT_ID_RE
from bench.process import ClientProcess, python_module
from bridge import protocol

HOOK_PATH: Final = "/hook"
ACCEPT_PATH: Final = "/accept"
LISTENING: Final = "receiver.listening"
RECEIPT_RE: Final = re.compile(rb'"event_id":"evt_bench_([a-z0-9]+)_(\d+)","received_ns":(\d+)')
"""A line of the receipts file: stage tag, index, time of receipt."""


def receipt_line(tag: bytes, index: bytes, received_ns: int) -> bytes:
    return b'{"event_id":"evt_bench_%s_%s","received_ns":%d}\n' % (tag, index, received_ns)


class Receiver:
    """Answers hook POSTs; records each accepted event's id and time of receipt."""

    def __init__(self, receipts: int, secret: str | None, refusing: bool) -> None:
        self.receipts = receipts
        self.secret = secret
        self.refusing = refusing

    async def hook(self, request: web.Request) -> web.Response:
        received_ns = time.monotonic_ns()
        body = await request.read()
        if self.refusing:
            return web.Response(status=503)
        if self.secret is not None and not protocol.signature_matches(
            (self.secret,),
            request.headers.get(protocol.TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(protocol.SIGNATURE_HEADER, ""),
        ):
            return web.Response(status=401)
        match = EVENT_ID_RE.search(body)
        if match is None:
            return web.Response(status=400)
        os.write(self.receipts, receipt_line(match.group(1), match.group(2), received_ns))
        return web.Response(status=200)

    async def accept(self, request: web.Request) -> web.Response:
        """From now on, answer 200; the answer is when that began."""
        self.refusing = False
        return web.Response(text=str(time.monotonic_ns()))


async def serve(receiver: Receiver) -> None:
    app = web.Application()
    app.router.add_post(HOOK_PATH, receiver.hook)
    app.router.add_post(ACCEPT_PATH, receiver.accept)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"event": LISTENING, "listen": f"127.0.0.1:{port}"}), file=sys.stderr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


class ReceiverProcess:
    """The receiver in its own process, with its receipts file in ``workdir``."""

    def __init__(self, workdir: Path, *, secret: str | None, refuse: bool) -> None:
        self.receipts = workdir / "receipts.jsonl"
        options = [*(("--secret", secret) if secret else ()), *(("--refuse",) if refuse else ())]
        argv = python_module("bench.receiver", self.receipts, *options)
        self.process = ClientProcess("receiver", argv, workdir, stop_by_signal=True)
        self.base_url = ""

    @property
    def hook_url(self) -> str:
        return self.base_url + HOOK_PATH

    async def start(self, within: float) -> None:
        """Raises TimeoutError when it does not report its port in time."""
        self.process.start()
        try:
            port = await self.process.listening_port(LISTENING, within)
        except BaseException:
            await self.process.stop(exit_wait=0.0)
            raise
        self.base_url = f"http://127.0.0.1:{port}"

    async def accept(self) -> int:
        """Switch it to answering 200; the monotonic time (ns) at which it did."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.base_url + ACCEPT_PATH) as response,
        ):
            response.raise_for_status()
            return int(await response.text())

    async def stop(self) -> None:
        await self.process.stop(exit_wait=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("receipts")
    parser.add_argument("--secret")
    parser.add_argument("--refuse", action="store_true")
    args = parser.parse_args()
    fd = os.open(args.receipts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        asyncio.run(serve(Receiver(fd, args.secret, args.refuse)))
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
