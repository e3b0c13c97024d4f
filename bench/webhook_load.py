"""Signed-POST load generator for the bridge's webhook listener, at a fixed concurrency.

Each request is what OpenMail sends (protocol notes, section 7): the raw event body,
``X-Timestamp``, ``X-Signature`` = ``bridge.protocol.sign`` and ``X-Event-Id``. At most
``concurrency`` requests are in flight; a paced run that needs more falls behind and is INVALID.
"""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp

from bench.events import Stage, iso_now
from bench.pacing import Pacer
from bridge import protocol

REQUEST_TIMEOUT = 15.0
"""OpenMail's own limit for a webhook answer."""


class WebhookLoad:
    """POSTs a stage's events to ``url``, signed with ``secret``."""

    def __init__(self, url: str, secret: str, concurrency: int) -> None:
        self.url = url
        self.secret = secret
        self.concurrency = concurrency
        self.failures: collections.Counter[str] = collections.Counter()
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.concurrency, force_close=False),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def problem(self) -> str | None:
        if not self.failures:
            return None
        return "webhook answers other than 200: " + ", ".join(
            f"{reason} x{n}" for reason, n in self.failures.most_common()
        )

    async def _post(self, stage: Stage, index: int) -> None:
        body = stage.body(index, iso_now())
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            protocol.TIMESTAMP_HEADER: timestamp,
            protocol.SIGNATURE_HEADER: protocol.sign(self.secret, timestamp, body),
            protocol.EVENT_ID_HEADER: f"evt_bench_{stage.tag}_{index}",
        }
        stage.sent_ns[index] = time.monotonic_ns()
        try:
            async with self._client().post(self.url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    self.failures[f"HTTP {response.status}"] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures[type(exc).__name__] += 1

    async def push_paced(self, stage: Stage, pacer: Pacer) -> None:
        """Start request ``i`` when it is due, if one of the ``concurrency`` slots is free."""
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def one(index: int) -> None:
            try:
                await self._post(stage, index)
            finally:
                slots.release()

        for i in range(stage.count):
            if not await pacer.wait(i):
                break
            await slots.acquire()  # all slots busy: this is where a paced run falls behind
            task = asyncio.create_task(one(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            stage.sent = i + 1
        await asyncio.gather(*tasks)

    async def push_burst(self, stage: Stage) -> None:
        """``concurrency`` closed-loop senders, each posting the next event as soon as it may."""
        indices = iter(range(stage.count))

        async def sender() -> None:
            for i in indices:
                stage.sent = max(stage.sent, i + 1)
                await self._post(stage, i)

        await asyncio.gather(*(sender() for _ in range(self.concurrency)))
