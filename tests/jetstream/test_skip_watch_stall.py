"""A stall's end never waits on the look at the consumer and the stream running beside it: nats-py's
request can swallow a cancellation that lands as its answer arrives, and a look left running
kept the sidecar from fetching for good."""

from __future__ import annotations

import asyncio
import random

from bridge.metrics import Metrics
from bridge.sources.nats_gap import LOOK_TIMEOUT, SkippedMessages

from .conftest import NatsServer, create_stream, nats_client

TRIES = 200


async def test_a_stall_ends_however_its_look_is_cut_short(nats_server: NatsServer) -> None:
    await create_stream(nats_server)
    rng = random.Random(7)

    async def blink(_: float) -> None:  # looks back to back: every moment is a request's
        await asyncio.sleep(0)

    async with nats_client(nats_server) as client:
        js = client.jetstream()
        skipped = SkippedMessages("OPENMAIL", "agent-support", Metrics(), sleep=blink)
        for _ in range(TRIES):
            stall = asyncio.ensure_future(skipped.stalled(js, asyncio.sleep(rng.uniform(0, 0.005))))
            done, _pending = await asyncio.wait({stall}, timeout=LOOK_TIMEOUT + 3)
            assert done, "a stall's end waited on its look"
            stall.result()
