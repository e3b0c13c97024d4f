"""The supervisor: builds the bridge from a Config, starts it in dependency order, stops it in
reverse.

Start: store -> sinks and their workers -> pipeline -> admin server -> webhook listener -> WebSocket
-> READY=1. Stop: readiness goes 503 and STOPPING=1; sources stop taking events (in-flight commits
finish); deliveries in flight finish up to ``shutdown_timeout``; whatever is undelivered stays in
the store for the next start; sinks close; the store closes. Reload swaps config parts atomically.
The supervisor never touches signals: the CLI does, so tests run it in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from bridge import logs
from bridge.config import Config, SinkConfig, describe, load_config
from bridge.config.loader import config_warnings
from bridge.delivery import Dispatcher, SinkWorker
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.routing import Router
from bridge.sinks import SINK_TYPES
from bridge.sources.webhook import WebhookSource
from bridge.sources.websocket import WebSocketSource
from bridge.store import Store, StoreLimits
from bridge.systemd import Notifier

log = structlog.get_logger("bridge.supervisor")
CREDENTIAL_HEADER = re.compile(r"(?i)auth|key|token|secret|cookie|session|pass")


def config_secrets(config: Config) -> list[str]:
    """Every secret value in a config, for the log redactor."""
    om = config.openmail
    values = [s.get() for s in om.webhook.account_secrets]
    values += [s.get() for s in om.webhook.inbox_secrets.values()]
    for secret in (om.api_key, config.admin.token):
        if secret is not None:
            values.append(secret.get())
    for sink in config.sinks.values():
        secret = getattr(sink.options, "secret", None)
        if secret is not None:
            values.append(secret.get())
        # Extra HTTP headers often carry credentials (Authorization, X-Api-Key).
        headers: Mapping[str, str] = getattr(sink.options, "headers", {})
        for name, value in headers.items():
            if CREDENTIAL_HEADER.search(name):
                values.append(value.split(" ", 1)[-1])
                values.append(value)
    return values


def limits_of(config: Config) -> StoreLimits:
    state = config.state
    return StoreLimits(
        max_bytes=state.max_bytes, min_free=state.min_free, dedup_window=state.dedup_window
    )


class Supervisor:
    """One running bridge."""

    def __init__(
        self,
        config: Config,
        *,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics()
        self.notifier = notifier or Notifier(env={})
        self._reload_config = reload_config or self._load_from_source
        self._stop_requested = asyncio.Event()
        self.store: Store | None = None
        self.dispatcher: Dispatcher | None = None
        self.pipeline: Pipeline | None = None
        self.webhook: WebhookSource | None = None
        self.websocket: WebSocketSource | None = None
        self.admin: object | None = None  # bridge.admin.AdminServer; untyped here to avoid a cycle
        self.started_at: float | None = None
        self.stopping = False
        self.last_reload: dict[str, object] = {}
        logs.REDACTOR.set_secrets(config_secrets(config))

    def _load_from_source(self) -> Config:
        if self.config.source is None:
            raise ConfigError(
                ["<config>: this bridge was not started from a file; nothing to reload"]
            )
        return load_config(self.config.source)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component; on failure, stop what started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        config = self.config
        if config.state.max_bytes < config.openmail.webhook.max_body:
            log.warning(
                "config.spool_smaller_than_max_body",
                max_bytes=config.state.max_bytes,
                max_body=config.openmail.webhook.max_body,
                hint="an event larger than state.max_bytes can never be stored; over the "
                "WebSocket it blocks the events after it until the bound is raised",
            )
        for warning in config_warnings(config):
            log.warning(warning.event, setting=warning.key, hint=warning.message)
        self.store = await Store.open(config.state.path, limits_of(config))
        self.dispatcher = Dispatcher(self.store, self.metrics)
        for sink_config in config.sinks.values():
            self.dispatcher.add(self._worker(sink_config))
        await self.dispatcher.start()
        self.pipeline = Pipeline(self.store, Router(config.routes), self.dispatcher, self.metrics)
        if config.admin.enabled:
            from bridge.admin import AdminServer

            admin = AdminServer(self)
            await admin.start()
            self.admin = admin
        om = config.openmail
        if om.webhook.enabled:
            self.webhook = WebhookSource(om.webhook, self.metrics)
            await self.webhook.start(self.pipeline)
        if om.websocket.enabled:
            self.websocket = WebSocketSource(om, self.store, self.metrics)
            await self.websocket.start(self.pipeline)
        self.started_at = time.time()
        log.info(
            "bridge.started",
            pid=os.getpid(),
            state=str(config.state.path),
            sinks=list(config.sinks),
            routes=[r.name for r in config.routes],
            webhook=str(om.webhook.listen) if om.webhook.enabled else None,
            websocket=om.websocket.url if om.websocket.enabled else None,
        )
        self.notifier.ready(self.one_line_status())
        self.notifier.start_watchdog(self.one_line_status)

    async def _start_workers(self, sinks: Mapping[str, SinkConfig]) -> None:
        """Start a worker for every sink in ``sinks`` that has none."""
        assert self.dispatcher is not None
        for name, sink_config in sinks.items():
            if name not in self.dispatcher.workers:
                worker = self._worker(sink_config)
                # Added before it starts: a row committed after its first load is still handed to
                # it (submit and load both skip rows it already holds).
                self.dispatcher.add(worker)
                try:
                    await worker.start()
                except BaseException:
                    del self.dispatcher.workers[name]
                    raise

    def _worker(self, sink_config: SinkConfig) -> SinkWorker:
        assert self.store is not None
        sink = SINK_TYPES[sink_config.type].factory(sink_config)
        return SinkWorker(sink_config, sink, self.store, self.metrics)

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
        if self.dispatcher is not None:
            self.dispatcher.abort()

    async def stop(self) -> None:
        """Stop in reverse order. Safe to call on a partly started bridge, and twice."""
        if self.stopping:
            return
        self.stopping = True
        self.notifier.stopping()
        log.info("bridge.stopping", timeout=self.config.shutdown_timeout)
        if self.webhook is not None:
            self.webhook.begin_stop()
        if self.websocket is not None:
            await self.websocket.stop()
        if self.webhook is not None:
            await self.webhook.stop()
        if self.dispatcher is not None:
            await self.dispatcher.stop(self.config.shutdown_timeout)
        if self.admin is not None:
            from bridge.admin import AdminServer

            assert isinstance(self.admin, AdminServer)
            await self.admin.stop()
        await self.notifier.stop_watchdog()
        if self.store is not None:
            await self.store.close()
        log.info("bridge.stopped")

    # --- reload ----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config and swap it in; an invalid one is reported and the old one stays."""
        try:
            new = self._reload_config()
        except ConfigError as exc:
            self.metrics.config_reloads.labels("invalid").inc()
            self.last_reload = {"at": time.time(), "ok": False, "errors": exc.problems}
            log.error(
                "config.reload_rejected",
                errors=exc.problems,
                hint="the previous configuration keeps running",
            )
            # The same SIGHUP comes from logrotate: its files move whatever the config says.
            await self.reopen()
            return False
        try:
            await self._apply(new)
        except Exception as exc:  # e.g. a new sink that cannot start; the rest stays as it was
            self.metrics.config_reloads.labels("invalid").inc()
            self.last_reload = {"at": time.time(), "ok": False, "errors": [str(exc)]}
            log.exception("config.reload_failed", error=str(exc))
            return False
        self.metrics.config_reloads.labels("ok").inc()
        self.last_reload = {"at": time.time(), "ok": True, "errors": []}
        log.info("config.reloaded", sinks=list(new.sinks), routes=[r.name for r in new.routes])
        return True

    def _running_part_of(self, new: Config) -> Config:
        """``new`` with the parts that only a restart can change kept as they run now."""
        old = self.config
        hook_old, hook_new = old.openmail.webhook, new.openmail.webhook
        ws_new = new.openmail.websocket
        restart_only = {
            "state": old.state != new.state,
            "admin": old.admin != new.admin,
            "openmail.webhook.enabled/listen/path/tls": (
                (hook_old.enabled, hook_old.listen, hook_old.path, hook_old.tls)
                != (hook_new.enabled, hook_new.listen, hook_new.path, hook_new.tls)
            ),
            "openmail.websocket.enabled": old.openmail.websocket.enabled != ws_new.enabled,
        }
        for section, changed in restart_only.items():
            if changed:
                log.warning(
                    "config.restart_needed",
                    section=section,
                    hint="this part of the new config applies after a restart",
                )
        webhook = dataclasses.replace(
            hook_new,
            enabled=hook_old.enabled,
            listen=hook_old.listen,
            path=hook_old.path,
            tls=hook_old.tls,
        )
        websocket = dataclasses.replace(ws_new, enabled=old.openmail.websocket.enabled)
        openmail = dataclasses.replace(new.openmail, webhook=webhook, websocket=websocket)
        return dataclasses.replace(new, state=old.state, admin=old.admin, openmail=openmail)

    async def _apply(self, new: Config) -> None:
        new = self._running_part_of(new)
        logs.REDACTOR.set_secrets(config_secrets(self.config) + config_secrets(new))
        assert self.dispatcher is not None
        assert self.pipeline is not None
        old_sinks = self.config.sinks
        for name, worker in list(self.dispatcher.workers.items()):
            if new.sinks.get(name) != worker.config:
                await worker.stop(min(new.shutdown_timeout, 5.0))
                del self.dispatcher.workers[name]
        try:
            await self._start_workers(new.sinks)
        except Exception:
            # Put back what ran before, so "the old configuration keeps running" holds.
            for name, worker in list(self.dispatcher.workers.items()):
                if old_sinks.get(name) != worker.config:
                    await self.dispatcher.workers.pop(name).stop(0)
            await self._start_workers(old_sinks)
            raise
        self.pipeline.router = Router(new.routes)
        if self.webhook is not None:
            self.webhook.update_config(new.openmail.webhook)
        if self.websocket is not None:
            self.websocket.reconfigure(new.openmail)
        self.config = new
        logs.REDACTOR.set_secrets(config_secrets(new))
        await self.reopen()

    async def reopen(self) -> None:
        """Reopen file sinks (logrotate moved their files)."""
        if self.dispatcher is None:
            return
        for worker in self.dispatcher.workers.values():
            with contextlib.suppress(Exception):
                await worker.sink.reopen()

    # --- health ----------------------------------------------------------------------------

    def readiness(self) -> tuple[str, dict[str, object]]:
        """``ready``, ``degraded`` or ``unavailable``, and each part's state."""
        parts: dict[str, object] = {}
        receiving: list[bool] = []
        if self.config.openmail.websocket.enabled:
            ws_ok = self.websocket is not None and self.websocket.receiving and not self.stopping
            parts["websocket"] = self.websocket.state if self.websocket else "not started"
            receiving.append(ws_ok)
        else:
            parts["websocket"] = "disabled"
        if self.config.openmail.webhook.enabled:
            hook_ok = self.webhook is not None and self.webhook.receiving and not self.stopping
            parts["webhook"] = "listening" if hook_ok else "down"
            receiving.append(hook_ok)
        else:
            parts["webhook"] = "disabled"
        store_ok = self.store is not None and self.store.writable
        parts["store"] = "writable" if store_ok else "unwritable"
        if store_ok and self.store is not None and not self.store.has_room:
            # A full spool refuses every event (webhook 503, WebSocket paused): nothing gets in.
            parts["store"] = "full"
            store_ok = False
        if self.stopping:
            parts["bridge"] = "stopping"
        if not store_ok or not any(receiving) or self.stopping:
            return "unavailable", parts
        return ("ready" if all(receiving) else "degraded"), parts

    def one_line_status(self) -> str:
        state, parts = self.readiness()
        return f"{state}: " + ", ".join(f"{k} {v}" for k, v in parts.items())

    async def status(self) -> dict[str, object]:
        """Everything ``/status`` and ``openmail-bridge status`` show."""
        assert self.store is not None
        state, parts = self.readiness()
        counts = await self.store.sink_counts()
        sinks: dict[str, object] = {}
        workers = self.dispatcher.workers if self.dispatcher else {}
        for name in sorted(set(counts) | set(workers)):
            c = counts.get(name)
            entry: dict[str, object] = {
                "pending": c.pending if c else 0,
                "dead": c.dead if c else 0,
                "configured": name in workers,
            }
            if name in workers:
                s = workers[name].state
                entry |= {
                    "type": workers[name].config.type,
                    "delivered": s.delivered,
                    "last_error": s.last_error,
                    "last_error_at": s.last_error_at,
                    "last_delivered_at": s.last_delivered_at,
                }
            sinks[name] = entry
        last_event_at = self.pipeline.last_event_at if self.pipeline else None
        return {
            "state": state,
            "parts": parts,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "websocket": self.websocket.status() if self.websocket else None,
            "webhook": self.webhook.status() if self.webhook else None,
            "cursor": self.store.cursor,
            "last_event_at": last_event_at,
            "possible_gaps": self.websocket.possible_gaps if self.websocket else 0,
            "spool": {
                "bytes": self.store.spool_bytes,
                "max_bytes": self.config.state.max_bytes,
                "writable": self.store.writable,
                "has_room": self.store.has_room,
                "path": str(self.config.state.path),
            },
            "sinks": sinks,
            "removed_sinks": sorted(n for n in counts if n not in workers),
            "config": {
                "source": str(self.config.source) if self.config.source else None,
                "last_reload": self.last_reload,
            },
        }

    def refresh_metrics(self, counts: dict[str, tuple[int, int]]) -> None:
        if self.store is None:
            return
        self.metrics.spool_bytes.set(self.store.spool_bytes)
        self.metrics.store_writable.set(1 if self.store.writable else 0)
        with contextlib.suppress(OSError):
            st = os.statvfs(Path(self.config.state.path).parent)
            self.metrics.disk_free_bytes.set(st.f_bavail * st.f_frsize)
        # ``counts`` names only sinks holding rows: a sink that drained must read 0, not its last
        # value, and a removed sink that drained drops out.
        self.metrics.pending.clear()
        self.metrics.dead_letters.clear()
        configured = self.dispatcher.workers if self.dispatcher else {}
        for name in sorted(set(configured) | set(counts)):
            pending, dead = counts.get(name, (0, 0))
            self.metrics.pending.labels(name).set(pending)
            self.metrics.dead_letters.labels(name).set(dead)

    def describe_config(self) -> object:
        return describe(self.config)
