"""The ``stats`` line: what was received and delivered since the previous line, at ``info``.

Per-event lines are debug, so an operator following the log at ``info`` reads this line every
``log.stats_interval``: accepted / duplicate / unrouted per source, delivered / retrying / dead
per sink. The numbers are differences of the Prometheus counters the hot path already keeps, read
once per interval, so the line costs the event path nothing. An interval in which nothing happened
writes no line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog
from prometheus_client import Counter

from bridge.metrics import Metrics

log = structlog.get_logger("bridge.stats")

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Totals = dict[tuple[str, str, str], float]
"""(``sources`` or ``sinks``, its name, the field) -> the counter's value."""

SOURCE_FIELDS: Final = ("accepted", "duplicate", "unrouted")
SINK_FIELDS: Final = ("delivered", "retrying", "dead")
OUTCOME_FIELDS: Final = {"delivered": "delivered", "retry": "retrying", "dead": "dead"}
"""``deliveries_total{outcome}`` -> the line's field: ``retrying`` counts failed attempts that
were scheduled again."""


def _samples(counter: Counter) -> list[tuple[Mapping[str, str], float]]:
    return [
        (s.labels, s.value)
        for metric in counter.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    ]


def read_totals(metrics: Metrics) -> Totals:
    """The counters the line is made of, as they stand now."""
    totals: Totals = {}
    by_source = {
        "accepted": metrics.events_received,
        "duplicate": metrics.events_duplicate,
        "unrouted": metrics.events_unrouted,
    }
    for field, counter in by_source.items():
        for labels, value in _samples(counter):
            totals["sources", labels["source"], field] = value
    for labels, value in _samples(metrics.deliveries):
        if (outcome := OUTCOME_FIELDS.get(labels["outcome"])) is not None:
            totals["sinks", labels["sink"], outcome] = value
    return totals


def difference(before: Totals, after: Totals) -> dict[str, dict[str, dict[str, int]]]:
    """What changed between two readings: ``{"sources": {name: {field: n}}, "sinks": ...}``.

    Only sources and sinks with something to report appear, each with all its fields (zeros
    included, so every line has the same shape); empty when nothing happened.
    """
    report: dict[str, dict[str, dict[str, int]]] = {"sources": {}, "sinks": {}}
    fields = {"sources": SOURCE_FIELDS, "sinks": SINK_FIELDS}
    for (group, name, field), value in sorted(after.items()):
        delta = int(value - before.get((group, name, field), 0.0))
        if delta > 0:
            entry = report[group].setdefault(name, dict.fromkeys(fields[group], 0))
            entry[field] = delta
    return report if report["sources"] or report["sinks"] else {}


class StatsReporter:
    """Writes the ``stats`` line every ``interval`` seconds while started.

    Args:
        metrics: the bridge's counters.
        sleep: waits between lines; tests pass one they step.
        clock: measures the time a line covers.
    """

    def __init__(
        self, metrics: Metrics, *, sleep: Sleep = asyncio.sleep, clock: Clock = time.monotonic
    ) -> None:
        self.metrics = metrics
        self.interval = 0.0
        self._sleep = sleep
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._totals: Totals = {}
        self._since = 0.0

    def start(self, interval: float) -> None:
        """Write a line every ``interval`` seconds from now on; 0 = never. Called again (a reload
        changed the interval), it carries on from the previous line with the new interval."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        else:
            self._totals, self._since = read_totals(self.metrics), self._clock()
        self.interval = interval
        if interval > 0:
            self._task = asyncio.create_task(self._run(interval), name="stats")

    async def stop(self) -> None:
        """Stop the timer and write what happened since the last line (a drain delivers too)."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        self.report()

    def report(self) -> None:
        """Write the line for what happened since the previous one, if anything did."""
        totals, now = read_totals(self.metrics), self._clock()
        changed = difference(self._totals, totals)
        if changed:
            log.info("stats", interval=round(now - self._since, 3), **changed)
        self._totals, self._since = totals, now

    async def _run(self, interval: float) -> None:
        while True:
            await self._sleep(interval)
            self.report()
