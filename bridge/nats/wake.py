"""What ends a NATS sink's retry wait early: the connection becoming usable again, or the stream
becoming usable again (created, or fixed, while connected), whichever comes first. Either may
clear what failed a publish; a delivery waiting a backoff then goes at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bridge.nats.connection import NatsConnection
from bridge.nats.stream import StreamKeeper


def publish_wake(connection: NatsConnection, stream: StreamKeeper) -> Callable[[], Awaitable[None]]:
    """A retryable publish failure's ``wake``, counted from now: what either has become since
    this call ends it, however soon the wait starts."""
    connections, recoveries = connection.connections, stream.recoveries

    def wake() -> Awaitable[None]:
        return first_of(connection.connected_after(connections), stream.usable_after(recoveries))

    return wake


async def first_of(*waits: Awaitable[None]) -> None:
    """Until the first of ``waits`` completes (its failure raised); the others are cancelled."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
