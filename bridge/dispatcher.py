"""The dispatcher: every sink's worker, the hand-off from the pipeline, and the watch for rows
another process changed (``openmail-bridge dlq retry``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog

from bridge.delivery import SinkWorker
from bridge.errors import StoreError
from bridge.metrics import Metrics
from bridge.store import Delivery, Store

log = structlog.get_logger("bridge.delivery")

RESYNC_INTERVAL = 1.0
"""How often the dispatcher looks for rows another process changed (``dlq retry``)."""


class Dispatcher:
    """All sink workers, and the hand-off from the pipeline."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self.workers: dict[str, SinkWorker] = {}
        self._resync_task: asyncio.Task[None] | None = None

    def add(self, worker: SinkWorker) -> None:
        self.workers[worker.name] = worker

    def submit(self, deliveries: Iterable[Delivery]) -> None:
        for delivery in deliveries:
            worker = self.workers.get(delivery.sink)
            if worker is not None:  # a sink removed by reload keeps its rows in the store
                worker.submit((delivery,))

    async def start(self) -> None:
        for worker in self.workers.values():
            await worker.start()
        self._resync_task = asyncio.create_task(self._watch_store(), name="dispatcher:resync")

    async def stop(self, timeout: float) -> None:  # noqa: ASYNC109 - each worker's drain deadline
        if self._resync_task:
            self._resync_task.cancel()
            await asyncio.gather(self._resync_task, return_exceptions=True)
        await asyncio.gather(*(w.stop(timeout) for w in self.workers.values()))

    def abort(self) -> None:
        for worker in self.workers.values():
            worker.abort()

    async def _watch_store(self) -> None:
        version = await self.store.data_version()
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            try:
                current = await self.store.data_version()
                if current != version:
                    version = current
                    for worker in list(self.workers.values()):
                        await worker.resync()
            except StoreError as exc:
                log.debug("dispatcher.resync_failed", error=str(exc))
