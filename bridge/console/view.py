"""What the console reads off a running bridge, and the reads themselves: the ``/status`` report
and the facts it lacks (the WebSocket's down cause, the webhook's counters, free disk), the recent
events and dead letters from the store, and the dead-letter actions of ``openmail-bridge dlq``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, Protocol

from prometheus_client import Counter

from bridge import __version__
from bridge.activity import RECENT, Activity, ActivityFeed, Kind
from bridge.config import Config
from bridge.console import events, overview
from bridge.dispatcher import Dispatcher
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.sources.websocket import WebSocketSource
from bridge.store import Store
from bridge.store.bounds import disk_space
from bridge.store.recent import dead_letters, event_versions, recent_events

MINUTE: Final = 60
"""Seconds summed for a sink's "delivered/min"."""


class ConsoleView(Protocol):
    """The parts of a running bridge the console reads; the supervisor provides them."""

    config: Config
    metrics: Metrics

    async def status(self) -> Mapping[str, object]:
        """The ``/status`` report."""
        ...

    @property
    def store(self) -> Store: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def websocket(self) -> WebSocketSource | None: ...

    @property
    def activity(self) -> ActivityFeed:
        """What happens to events, as it happens."""
        ...


def counter_values(counter: Counter, label: str) -> dict[str, int]:
    """A labelled counter's totals by the value of ``label``."""
    return {
        sample.labels[label]: int(sample.value)
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def per_minute(series: Sequence[int]) -> int:
    """The last 60 one-second counts of a throughput series, summed."""
    return sum(series[-MINUTE:])


async def read_overview(view: ConsoleView) -> dict[str, object]:
    """``/api/overview``."""
    report = await view.status()
    ws = view.websocket
    down_kind = ws.health.down_kind if ws is not None else None
    config, now = view.config, time.time()
    disk = disk_space(Path(config.state.path))
    delivered = view.activity.throughput.snapshot(now)["delivered"]
    facts = overview.Facts(
        version=__version__,
        now=now,
        websocket_down_kind=down_kind.value if down_kind is not None else None,
        webhook_accepted=counter_values(view.metrics.events_received, "source").get("webhook", 0),
        webhook_rejected=counter_values(view.metrics.webhook_rejected, "reason"),
        free_disk=disk.free,
        disk_size=disk.size,
        min_free=config.state.min_free,
        delivered_per_minute={sink: per_minute(series) for sink, series in delivered.items()},
        show_content=config.admin.show_content,
    )
    return overview.overview(report, facts)


def _routes(view: ConsoleView) -> events.Routes:
    router = view.pipeline.router
    return lambda event: [route.name for route in router.matching(event)]


def delivered_attempts(records: Iterable[Activity]) -> events.Attempts:
    """The attempt that delivered each (event id, sink) among ``records``, oldest first, so
    that a later delivery of the same event (a replay) wins."""
    return {
        (a.event_id, a.sink): a.attempt
        for a in records
        if a.kind is Kind.DELIVERED and a.sink is not None and a.attempt is not None
    }


async def read_events(view: ConsoleView, *, limit: int) -> list[dict[str, object]]:
    """``/api/events``: the newest events, held or delivered."""
    routes, show = _routes(view), view.config.admin.show_content
    rows = await recent_events(view.store, limit=limit)
    delivered = delivered_attempts(view.activity.recent(RECENT))
    shown: list[dict[str, object]] = []
    seen: set[str] = set()
    for row in rows:  # newest first: the feed's records name an event, not which copy of it
        newest = row.event_id not in seen
        seen.add(row.event_id)
        counts = delivered if newest else {}
        shown.append(events.event_json(row, routes, show_content=show, delivered=counts))
    return shown


async def read_event(view: ConsoleView, event_id: str) -> dict[str, object] | None:
    """``/api/events/{event_id}``: the event's newest entry, its other entries (a replay holds
    an event again), and what the activity feed still remembers of its attempts."""
    routes, show = _routes(view), view.config.admin.show_content
    versions = await event_versions(view.store, event_id)
    if not versions:
        return None
    records = [a for a in view.activity.recent(RECENT) if a.event_id == event_id]
    # The feed's records name the event, not which copy: they count for the newest one only.
    newest = events.event_json(
        versions[0], routes, show_content=show, delivered=delivered_attempts(records)
    )
    earlier = [
        events.event_json(row, routes, show_content=show, delivered={}) for row in versions[1:]
    ]
    return {**newest, "earlier": earlier, "activity": [a.as_dict() for a in records]}


async def read_dead(view: ConsoleView, *, limit: int) -> list[dict[str, object]]:
    """``/api/dead``: each sink's dead letters, newest first."""
    counts = {name: c.dead for name, c in (await view.store.sink_counts()).items() if c.dead}
    return events.dead_json(await dead_letters(view.store, limit=limit), counts)


async def known_sinks(view: ConsoleView) -> set[str]:
    """Configured sinks and those still holding rows."""
    return set(view.config.sinks) | set(await view.store.sink_counts())


async def retry_dead(view: ConsoleView, sink: str, event_id: str | None) -> int:
    """``dlq retry``: the sink's dead rows (or one event's) back to pending, picked up at once."""
    count = await view.store.dlq_retry(sink=sink, event_id=event_id)
    worker = view.dispatcher.workers.get(sink)
    if count and worker is not None:
        await worker.resync()
    return count


async def purge_dead(view: ConsoleView, sink: str, event_id: str | None) -> int:
    """``dlq purge``: the sink's dead rows (or one event's) deleted."""
    return await view.store.dlq_purge(sink=sink, event_id=event_id)
