"""The activity feed over HTTP, for the console and ``openmail-bridge tail``: ``GET /api/stream``
(Server-Sent Events) and ``GET /api/throughput`` (JSON). Both are private admin paths; the admin
server's middleware decides who may read them.

The stream sends ``event: activity`` with a record as JSON per thing that happens to an event,
``event: lost`` with ``{"count": N}`` when the reader fell too far behind and N records were
dropped, and a ``: keepalive`` comment after ``KEEPALIVE`` seconds without either, so proxies keep
the connection and a reader can tell a quiet bridge from a gone one. Query parameters ``inbox``,
``type``, ``source`` and ``sink`` keep only the records whose field equals the value; a source
the feed never names, or a sink the bridge does not run, is answered 400 with the known ones
(such a stream would stay silent for good, which a reader cannot tell from a quiet bridge).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Final

import orjson
from aiohttp import web

from bridge.activity import SOURCES, Activity, ActivityFeed, Filter, Lost, Subscription

KEEPALIVE: Final = 15.0
"""Seconds of silence after which the stream sends a comment."""
MAX_STREAMS: Final = 32
"""Streams open at once; more are answered 503: each holds a queue of records in memory."""
WRITE_TIMEOUT: Final = 30.0
"""Seconds one write may wait for the reader to take what was sent before: a client that holds
the stream open and never reads would otherwise keep one of the ``MAX_STREAMS`` for good."""
WRITE_BATCH: Final = 256
"""Records written to the socket at once when a reader has fallen behind."""
HEADERS: Final = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a reverse proxy (nginx) must not hold the stream back
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def encode(item: Activity | Lost) -> bytes:
    """One Server-Sent Event. The JSON is a single line, as a ``data:`` field needs."""
    if isinstance(item, Lost):
        return b"event: lost\ndata: " + orjson.dumps({"count": item.count}) + b"\n\n"
    return b"event: activity\ndata: " + orjson.dumps(item.as_dict()) + b"\n\n"


def unknown_filter(
    query: Mapping[str, str], sinks: Collection[str] | None
) -> dict[str, object] | None:
    """The 400 answer's body for a ``source``, or a ``sink`` (unless ``sinks`` is None), that no
    record can name; else None."""
    source, sink = query.get("source"), query.get("sink")
    if source and source not in SOURCES:
        known = list(SOURCES)
        error = f"unknown source {source!r} (sources: {', '.join(known)})"
        return {"error": error, "sources": known}
    if sink and sinks is not None and sink not in sinks:
        names = sorted(sinks)
        shown = ", ".join(names) or "none"
        return {"error": f"unknown sink {sink!r} (sinks: {shown})", "sinks": names}
    return None


def activity_stream(
    feed: ActivityFeed,
    *,
    sinks: Callable[[], Collection[str]] | None = None,
    keepalive: float = KEEPALIVE,
    max_streams: int = MAX_STREAMS,
    write_timeout: float = WRITE_TIMEOUT,
) -> Handler:
    """The ``GET /api/stream`` handler for ``feed``; ``sinks`` names the sinks the bridge runs
    now (a reload changes them), None to take any sink filter. The stream ends when the feed
    closes (the bridge is stopping) or the reader goes away."""

    async def handle(request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        try:
            wanted = Filter.of(query)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if (unknown := unknown_filter(query, None if sinks is None else sinks())) is not None:
            return web.json_response(unknown, status=400)
        if feed.subscribers >= max_streams:
            return web.json_response(
                {"error": f"too many live streams open (at most {max_streams}); try again later"},
                status=503,
                headers={"Retry-After": "5"},
            )
        response = web.StreamResponse(headers=HEADERS)

        async def write(data: bytes) -> None:
            async with asyncio.timeout(write_timeout):
                await response.write(data)

        with feed.subscribe(wanted) as subscription:
            await response.prepare(request)
            try:
                # Something at once: a client learns the stream is open before the first record.
                await write(b": stream open\n\n")
                await _pump(subscription, write, keepalive)
            except ConnectionResetError:
                pass  # the reader went away
            except TimeoutError:
                # The reader stopped reading: its stream goes, and its connection with it, at
                # once (a close would wait for the reader to take what is buffered: never).
                if request.transport is not None:
                    request.transport.abort()
        return response

    return handle


async def _pump(
    subscription: Subscription, write: Callable[[bytes], Awaitable[None]], keepalive: float
) -> None:
    while True:
        try:
            async with asyncio.timeout(keepalive):
                first = await subscription.get()
        except TimeoutError:
            # Also how a reader that left unnoticed is found: this write fails.
            await write(b": keepalive\n\n")
            continue
        if first is None:
            return
        items = [first, *subscription.take(WRITE_BATCH - 1)]
        await write(b"".join(encode(item) for item in items))


def throughput(feed: ActivityFeed, *, clock: Callable[[], float] = time.time) -> Handler:
    """The ``GET /api/throughput`` handler: accepted and delivered per second over the window."""

    async def handle(_: web.Request) -> web.Response:
        return web.json_response(feed.throughput.snapshot(clock()))

    return handle
