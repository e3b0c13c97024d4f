"""The supervisor: builds the bridge from a Config, starts it in dependency order, stops it in
reverse.

Start: store -> sinks and their workers -> pipeline -> admin server -> webhook listener -> WebSocket
-> READY=1. Stop: readiness goes 503 and STOPPING=1; sources stop taking events (in-flight commits
finish); deliveries in flight finish up to ``shutdown_timeout``; whatever is undelivered stays in
the store for the next start; sinks close; the store closes. Reload swaps config parts atomically
(``bridge.reload`` decides what changes). The supervisor reads health facts off the running parts
for the admin server (``bridge.health`` models them). It never touches signals: the CLI does, so
tests run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from pathlib import Path

import structlog

from bridge import logs
from bridge.activity import ActivityFeed
from bridge.admin import AdminServer
from bridge.config import Config, SinkConfig, load_config
from bridge.config_secrets import config_secrets
from bridge.delivery import SinkWorker
from bridge.dispatcher import Dispatcher
from bridge.errors import ConfigError
from bridge.gate import Gate, gate_of
from bridge.health import (
    HealthFacts,
    Readiness,
    SinkFacts,
    StatusFacts,
    one_line,
    pending_age,
    readiness,
    reload_result,
    status_report,
)
from bridge.metrics import Metrics
from bridge.nats.bus import NatsBus
from bridge.pipeline import Pipeline
from bridge.reload import (
    applicable_part,
    log_restart_needed,
    log_warnings,
    restart_only_changes,
    sinks_to_replace,
    usable_with,
)
from bridge.runtime import loop_name
from bridge.sinks import SINK_TYPES
from bridge.sources.webhook import WebhookSource
from bridge.sources.websocket import WebSocketSource
from bridge.stats import StatsReporter
from bridge.store import Store, StoreLimits, moved_aside
from bridge.store.bounds import disk_space
from bridge.systemd import Notifier
from bridge.trigger import Trigger

log = structlog.get_logger("bridge.supervisor")


class Phase(StrEnum):
    """Where a supervisor is in its life, from built to stopped."""

    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Running:
    """The parts of a bridge, built together once the store is open. A source or the admin
    server is None only when the configuration disables it."""

    store: Store
    dispatcher: Dispatcher
    pipeline: Pipeline
    admin: AdminServer | None
    webhook: WebhookSource | None
    websocket: WebSocketSource | None
    nats: NatsBus | None


class Supervisor:
    """One running bridge.

    Args:
        config: what to run.
        reload_config: returns the configuration :meth:`reload` swaps in; by default the file
            ``config`` was loaded from is read again.
        notifier: tells systemd about readiness and stopping; silent by default.
        sleep: waits between ``stats`` lines; tests pass one they step.
    """

    def __init__(
        self,
        config: Config,
        *,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.stats = StatsReporter(self.metrics, sleep=sleep)
        self.notifier = notifier or Notifier(env={})
        self._reload_config = reload_config or self._load_from_source
        self._stop_requested = asyncio.Event()
        # One reload at a time, and none once stopping: two at once would each replace the
        # same worker, and the one left out of the dispatcher would run on, never stopped.
        self._reloading = asyncio.Lock()
        self.running: Running | None = None
        self.phase = Phase.NEW
        self.started_at: float | None = None
        self.last_reload: dict[str, object] = {}
        self.restart_needed: list[str] = []  # what the last applied reload left for a restart
        self._nats: NatsBus | None = None
        self.trigger = Trigger(self)  # test events for the admin server's /trigger
        self.activity = ActivityFeed()  # what happens to events, for /api/stream; kept on reload
        logs.REDACTOR.set_secrets(config_secrets(config))

    def _load_from_source(self) -> Config:
        if self.config.source is None:
            raise ConfigError(
                ["<config>: this bridge was not started from a file; nothing to reload"]
            )
        return load_config(self.config.source, sink_types=SINK_TYPES)

    # --- the parts ---------------------------------------------------------------------------

    def _parts(self) -> Running:
        if self.running is None:
            raise RuntimeError("the bridge is not started")
        return self.running

    @property
    def store(self) -> Store:
        """The open store. Raises RuntimeError before :meth:`start` opened it."""
        return self._parts().store

    @property
    def dispatcher(self) -> Dispatcher:
        """The sink workers. Raises RuntimeError before :meth:`start`."""
        return self._parts().dispatcher

    @property
    def pipeline(self) -> Pipeline:
        """Where sources hand events over. Raises RuntimeError before :meth:`start`."""
        return self._parts().pipeline

    @property
    def admin(self) -> AdminServer | None:
        """The admin server; None before :meth:`start` or when disabled."""
        return self.running.admin if self.running is not None else None

    @property
    def webhook(self) -> WebhookSource | None:
        """The webhook listener; None before :meth:`start` or when disabled."""
        return self.running.webhook if self.running is not None else None

    @property
    def websocket(self) -> WebSocketSource | None:
        """The WebSocket source; None before :meth:`start` or when disabled."""
        return self.running.websocket if self.running is not None else None

    @property
    def stopping(self) -> bool:
        return self.phase in (Phase.STOPPING, Phase.STOPPED)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component; on failure, stop what started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self.phase = Phase.STARTING
        config = self.config
        log_warnings(config)
        store = await Store.open(config.state.path, StoreLimits.from_config(config.state))
        try:
            self.running = running = self._assemble(store)
        except BaseException:
            await store.close()
            raise
        if running.nats is not None:
            await running.nats.start()
        await running.dispatcher.start()
        if running.admin is not None:
            await running.admin.start()
        if running.webhook is not None:
            await running.webhook.start(running.pipeline)
        if running.websocket is not None:
            await running.websocket.start(running.pipeline)
        if running.nats is not None:
            await running.nats.start_source(running.pipeline)
        self.started_at = time.time()
        self.phase = Phase.RUNNING
        self.stats.start(config.log.stats_interval)
        om = config.openmail
        log.info(
            "bridge.started",
            pid=os.getpid(),
            state=str(config.state.path),
            sinks=list(config.sinks),
            routes=[r.name for r in config.routes],
            webhook=str(om.webhook.listen) if om.webhook.enabled else None,
            websocket=om.websocket.url if om.websocket.enabled else None,
            nats=running.nats is not None,
            event_loop=loop_name(config.event_loop),
        )
        self.notifier.ready(self.one_line_status())
        self.notifier.start_watchdog(self.one_line_status)

    def _assemble(self, store: Store) -> Running:
        """Every part, built but not started: each one's stop is safe before its start."""
        config, om = self.config, self.config.openmail
        dispatcher = Dispatcher(store, self.metrics)
        nats = NatsBus(config.nats, self.metrics, config.sinks.values()) if config.nats else None
        self._nats = nats
        for sink_config in config.sinks.values():
            dispatcher.add(self._worker(store, sink_config))
        return Running(
            store=store,
            dispatcher=dispatcher,
            pipeline=Pipeline(
                store, gate_of(config, store), dispatcher, self.metrics, self.activity
            ),
            nats=nats,
            admin=AdminServer(config.admin, self) if config.admin.enabled else None,
            webhook=WebhookSource(om.webhook, self.metrics) if om.webhook.enabled else None,
            websocket=(WebSocketSource(om, self.metrics) if om.websocket.enabled else None),
        )

    def _worker(self, store: Store, sink_config: SinkConfig[object]) -> SinkWorker:
        sink = SINK_TYPES[sink_config.type].factory(sink_config)
        if self._nats is not None:
            self._nats.bind(sink)
        return SinkWorker(sink_config, sink, store, self.metrics, activity=self.activity)

    async def _start_workers(
        self, sinks: Mapping[str, SinkConfig[object]], replaced: Mapping[str, SinkWorker]
    ) -> None:
        """Start a worker for every sink in ``sinks`` that has none, going on from the state
        (what ``/status`` shows) of the worker it replaces, if any."""
        running = self._parts()
        workers = running.dispatcher.workers
        for name, sink_config in sinks.items():
            if name not in workers:
                worker = self._worker(running.store, sink_config)
                if name in replaced:
                    worker.state = replaced[name].state.carried_over()
                # Added before it starts: a row committed after its first load is still handed to
                # it (submit and load both skip rows it already holds).
                running.dispatcher.add(worker)
                try:
                    await worker.start()
                except BaseException:
                    del workers[name]
                    raise

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def wait_stop_requested(self) -> None:
        await self._stop_requested.wait()

    async def run(self) -> None:
        """Start, run until :meth:`request_stop`, stop."""
        await self.start()
        try:
            await self._stop_requested.wait()
        finally:
            await self.stop()

    def abort(self) -> None:
        """Make a stop in progress skip the rest of its drain (a second SIGTERM)."""
        if self.running is not None:
            self.running.dispatcher.abort()

    async def stop(self) -> None:
        """Stop in reverse order. Safe to call on a partly started bridge, and twice."""
        if self.stopping:
            return
        self.phase = Phase.STOPPING
        self.notifier.stopping()
        log.info("bridge.stopping", timeout=self.config.shutdown_timeout)
        async with self._reloading:
            pass  # a reload under way finishes first: the drain then stops the workers it started
        running = self.running
        if running is not None:
            if running.webhook is not None:
                running.webhook.begin_stop()
            if running.websocket is not None:
                await running.websocket.stop()
            if running.nats is not None:
                await running.nats.stop_source()
            if running.webhook is not None:
                await running.webhook.stop()
            await running.dispatcher.stop(self.config.shutdown_timeout)
            await self.stats.stop()  # after the drain, whose deliveries it counts
            if running.nats is not None:
                await running.nats.stop()
            self.activity.close()  # ends the live streams, which would hold the admin server up
            if running.admin is not None:
                await running.admin.stop()
        await self.notifier.stop_watchdog()
        if running is not None:
            await running.store.close()
        self.phase = Phase.STOPPED
        log.info("bridge.stopped")

    # --- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config and swap it in; an invalid one is reported and the old one stays.

        Reloads run one at a time, in the order asked; one asked while stopping does nothing."""
        async with self._reloading:
            if self.stopping or self.running is None:
                log.info("config.reload_skipped", reason="the bridge is not running")
                return False
            return await self._reload()

    async def _reload(self) -> bool:
        now = time.time()
        try:
            new = usable_with(self.config, self._reload_config())
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            self.last_reload = reload_result("rejected", exc.problems, self.restart_needed, at=now)
            log.error(
                "config.reload_rejected",
                errors=exc.problems,
                hint="the previous configuration keeps running",
            )
            # The same SIGHUP comes from logrotate: its files move whatever the config says.
            await self.reopen()
            return False
        try:
            self.restart_needed = await self._apply(new)
        except Exception as exc:  # e.g. a new sink that cannot start; the rest stays as it was
            self.metrics.config_reloads.labels("invalid").inc()
            self.last_reload = reload_result("failed", [str(exc)], self.restart_needed, at=now)
            log.exception("config.reload_failed", error=str(exc))
            return False
        self.metrics.config_reloads.labels("ok").inc()
        self.last_reload = reload_result("ok", [], self.restart_needed, at=now)
        log.info("config.reloaded", sinks=list(new.sinks), routes=[r.name for r in new.routes])
        log_warnings(self.config)  # what now runs, as check would say of it
        return True

    async def _apply(self, new: Config) -> list[str]:
        """Swap ``new`` in; the sections of it that only a restart applies."""
        restart_needed = restart_only_changes(self.config, new)
        log_restart_needed(restart_needed)
        new = applicable_part(self.config, new)
        logs.REDACTOR.set_secrets(config_secrets(self.config) + config_secrets(new))
        running = self._parts()
        workers = running.dispatcher.workers
        old_sinks = self.config.sinks

        def running_sinks() -> dict[str, SinkConfig[object]]:
            return {name: worker.config for name, worker in workers.items()}

        replaced = {name: workers[name] for name in sinks_to_replace(running_sinks(), new.sinks)}
        for name, worker in replaced.items():
            await worker.stop(min(new.shutdown_timeout, 5.0))
            if workers.get(name) is worker:
                del workers[name]
        try:
            await self._start_workers(new.sinks, replaced)
        except Exception:
            # Put back what ran before, so "the old configuration keeps running" holds.
            for name in sinks_to_replace(running_sinks(), old_sinks):
                replaced[name] = workers.pop(name)
                await replaced[name].stop(0)
            await self._start_workers(old_sinks, replaced)
            raise
        running.pipeline.gate = Gate(new.routes, new.sinks, running.pipeline.gate.own)
        if new.log.stats_interval != self.stats.interval:
            self.stats.start(new.log.stats_interval)
        if running.webhook is not None:
            running.webhook.update_config(new.openmail.webhook)
        if running.websocket is not None:
            running.websocket.reconfigure(new.openmail)
        self.config = new
        logs.REDACTOR.set_secrets(config_secrets(new))
        await self.reopen()
        return restart_needed

    async def reopen(self) -> None:
        """Reopen file sinks (logrotate moved their files)."""
        if self.running is None:
            return
        for worker in self.running.dispatcher.workers.values():
            with contextlib.suppress(Exception):
                await worker.sink.reopen()

    # --- what the admin server shows (bridge.admin.AdminView) ---------------------------------

    def _health_facts(self) -> HealthFacts:
        running, om = self.running, self.config.openmail
        ws = running.websocket if running is not None else None
        hook = running.webhook if running is not None else None
        store = running.store if running is not None else None
        nats = running.nats if running is not None else None
        return HealthFacts(
            websocket_enabled=om.websocket.enabled,
            websocket_state=ws.state if ws is not None else None,
            websocket_receiving=ws is not None and ws.receiving,
            webhook_enabled=om.webhook.enabled,
            webhook_receiving=hook is not None and hook.receiving,
            store_writable=store is not None and store.writable,
            store_has_room=store is not None and store.has_room,
            stopping=self.stopping,
            nats_state=nats.state if nats is not None else None,
            nats_consuming=(nats.source.receiving if nats.source else None) if nats else None,
        )

    def readiness(self) -> tuple[Readiness, dict[str, str]]:
        """``ready``, ``degraded`` or ``unavailable``, and each part's state."""
        return readiness(self._health_facts())

    def one_line_status(self) -> str:
        return one_line(*self.readiness())

    async def _queues(self, store: Store) -> tuple[dict[str, tuple[int, int]], dict[str, float]]:
        """(pending, dead) of each sink holding rows; the oldest receipt of those pending."""
        counts = {name: (c.pending, c.dead) for name, c in (await store.sink_counts()).items()}
        return counts, await store.oldest_pending([n for n, (p, _) in counts.items() if p])

    async def status(self) -> dict[str, object]:
        """Everything ``/status`` and ``openmail-bridge status`` show; RuntimeError before start."""
        running = self._parts()
        ws, hook = running.websocket, running.webhook
        if running.nats is not None:
            await running.nats.refresh()
        counts, oldest = await self._queues(running.store)
        return status_report(
            StatusFacts(
                health=self._health_facts(),
                pid=os.getpid(),
                now=time.time(),
                started_at=self.started_at,
                websocket=ws.status() if ws is not None else None,
                webhook=hook.status() if hook is not None else None,
                cursor=running.store.cursor,
                last_event_at=running.pipeline.last_event_at,
                possible_gaps=ws.possible_gaps if ws is not None else 0,
                spool_bytes=running.store.spool_bytes,
                spool_max_bytes=self.config.state.max_bytes,
                spool_path=str(self.config.state.path),
                disk=disk_space(Path(self.config.state.path)),
                min_free=self.config.state.min_free,
                counts=counts,
                oldest_pending=oldest,
                sinks={
                    name: SinkFacts(worker.config.type, worker.state)
                    for name, worker in running.dispatcher.workers.items()
                },
                config_source=str(self.config.source) if self.config.source else None,
                last_reload=self.last_reload,
                nats=running.nats.status() if running.nats is not None else None,
                guarded=running.pipeline.gate_report(),
            )
        )

    async def metrics_text(self) -> bytes:
        running = self.running
        if running is not None:
            if running.nats is not None:
                await running.nats.refresh()
            counts, oldest = await self._queues(running.store)
            self.metrics.spool_bytes.set(running.store.spool_bytes)
            self.metrics.store_writable.set(1 if running.store.writable else 0)
            if (free := disk_space(Path(self.config.state.path)).free) is not None:
                self.metrics.disk_free_bytes.set(free)
            self.metrics.store_corrupt_files.set(len(moved_aside(Path(self.config.state.path))))
            now = time.time()  # every running sink, and removed ones still holding rows
            queues = {
                name: (*counts.get(name, (0, 0)), pending_age(oldest.get(name), now))
                for name in {*running.dispatcher.workers, *counts}
            }
            self.metrics.set_queues(queues)
        return self.metrics.render()
