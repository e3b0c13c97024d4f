"""The dispatcher: every sink's worker, the hand-off from the pipeline, and the watch for rows
another process changed (``openmail-bridge dlq retry`` / ``dlq purge``), which it logs as
``dlq.retried`` / ``dlq.purged`` when it picks them up."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import structlog

from bridge.delivery import SinkWorker
from bridge.errors import StoreError
from bridge.metrics import Metrics
from bridge.store import Delivery, Store

log = structlog.get_logger("bridge.delivery")

RESYNC_INTERVAL = 1.0
"""How often the dispatcher looks for rows another process changed (``dlq retry``)."""


@dataclass(frozen=True, slots=True)
class DeadSnapshot:
    """The dead-letter counts at one moment, and what this process had committed of them.

    Only this process dead-letters and only another one (the ``dlq`` command) takes rows out of
    the table, so between two snapshots the rows gone beyond what the workers added are the
    other process's doing.
    """

    recorded: Mapping[str, tuple[SinkWorker, int]]  # sink -> (its worker, dead-letters committed)
    counts: Mapping[str, tuple[int, int]]  # sink -> (pending, dead), every sink holding rows


def dlq_changes(
    before: DeadSnapshot, after: DeadSnapshot, taken: Mapping[str, int]
) -> dict[str, tuple[int, int]]:
    """(retried, purged) per sink between two snapshots; ``taken`` counts the redriven rows the
    workers picked up meanwhile. A sink without a worker (removed by a reload) changes only by
    the other process, so there its pending rows that appeared are the retried ones."""
    changes: dict[str, tuple[int, int]] = {}
    for sink in sorted(set(before.counts) | set(after.counts)):
        pending_before, dead_before = before.counts.get(sink, (0, 0))
        pending_after, dead_after = after.counts.get(sink, (0, 0))
        own = 0
        if sink in after.recorded:
            worker, committed = after.recorded[sink]
            previous = before.recorded.get(sink)
            own = committed - (previous[1] if previous and previous[0] is worker else 0)
            retried = taken.get(sink, 0)
        else:
            retried = max(0, pending_after - pending_before)
        removed = dead_before + own - dead_after
        retried = min(retried, max(removed, 0))
        if removed > 0:
            changes[sink] = (retried, removed - retried)
    return changes


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
        """Hand committed rows to their sinks' workers: one hand-off per sink, in order."""
        by_sink: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_sink.setdefault(delivery.sink, []).append(delivery)
        for sink, rows in by_sink.items():
            worker = self.workers.get(sink)
            if worker is not None:  # a sink removed by reload keeps its rows in the store
                worker.submit(rows)

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

    def _recorded(self) -> dict[str, tuple[SinkWorker, int]] | None:
        """Each worker's committed dead-letter count; None while one is being written, when the
        store and the count may disagree."""
        recorded = {}
        for name, worker in self.workers.items():
            if worker.state.dead != worker.state.dead_recorded:
                return None
            recorded[name] = (worker, worker.state.dead_recorded)
        return recorded

    async def _dead_snapshot(self) -> DeadSnapshot | None:
        recorded = self._recorded()
        if recorded is None:
            return None
        counts = await self.store.sink_counts()
        if self._recorded() != recorded:  # a dead-letter committed during the read
            return None
        return DeadSnapshot(recorded, {n: (c.pending, c.dead) for n, c in counts.items()})

    async def _watch_store(self) -> None:
        version = await self.store.data_version()
        baseline: DeadSnapshot | None = None
        try:
            baseline = await self._dead_snapshot()
        except StoreError as exc:  # taken on a later round; changes before it go unlogged
            log.debug("dispatcher.resync_failed", error=str(exc))
        taken: dict[str, int] = {}
        recount = baseline is None
        while True:
            await asyncio.sleep(RESYNC_INTERVAL)
            try:
                current = await self.store.data_version()
                if current != version:
                    version = current
                    for worker in list(self.workers.values()):
                        count = await worker.resync()
                        taken[worker.name] = taken.get(worker.name, 0) + count
                    recount = True
                if recount and (snapshot := await self._dead_snapshot()) is not None:
                    if baseline is not None:
                        self._log_dlq_changes(dlq_changes(baseline, snapshot, taken))
                    baseline, taken, recount = snapshot, {}, False
            except StoreError as exc:
                log.debug("dispatcher.resync_failed", error=str(exc))

    @staticmethod
    def _log_dlq_changes(changes: Mapping[str, tuple[int, int]]) -> None:
        for sink, (retried, purged) in changes.items():
            if retried:
                log.info("dlq.retried", sink=sink, count=retried)
            if purged:
                log.info("dlq.purged", sink=sink, count=purged)
