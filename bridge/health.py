"""The health model: what ``/readyz`` and ``/status`` report, computed from plain facts.

Readiness answers "can events get in?": ``ready`` when every enabled source (the NATS consumer
included) receives and the store
takes writes, ``degraded`` when only some sources receive, ``unavailable`` when none does, the
store refuses or the bridge is stopping. Liveness is not modelled here: the admin server answers
``/healthz`` whenever the event loop turns. The supervisor reads the facts off the running parts;
nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import NamedTuple

from bridge.store.bounds import DiskSpace


class Readiness(StrEnum):
    READY = "ready"
    DEGRADED = "degraded"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthFacts:
    """What readiness is computed from, read off the bridge at one moment."""

    websocket_enabled: bool
    websocket_state: str | None  # the source's own state word; None before it exists
    websocket_receiving: bool
    webhook_enabled: bool
    webhook_receiving: bool
    store_writable: bool  # False too while no store is open
    store_has_room: bool
    stopping: bool
    nats_state: str | None = None
    """The NATS connection's state word; None when the bridge does not use NATS."""
    nats_consuming: bool | None = None
    """Whether the NATS source receives; None when ``nats.consume`` is not set. A NATS sink
    alone never counts: events still get in while it cannot publish."""


def readiness(facts: HealthFacts) -> tuple[Readiness, dict[str, str]]:
    """The bridge's readiness, and each part's state as ``/readyz`` shows it."""
    parts: dict[str, str] = {}
    receiving: list[bool] = []
    if facts.websocket_enabled:
        ws_state = facts.websocket_state
        parts["websocket"] = "not started" if ws_state is None else ws_state
        receiving.append(facts.websocket_receiving and not facts.stopping)
    else:
        parts["websocket"] = "disabled"
    if facts.webhook_enabled:
        hook_ok = facts.webhook_receiving and not facts.stopping
        parts["webhook"] = "listening" if hook_ok else "down"
        receiving.append(hook_ok)
    else:
        parts["webhook"] = "disabled"
    if facts.nats_state is not None:
        parts["nats"] = facts.nats_state
        if facts.nats_consuming is not None:
            receiving.append(facts.nats_consuming and not facts.stopping)
    store_ok = facts.store_writable
    parts["store"] = "writable" if store_ok else "unwritable"
    if store_ok and not facts.store_has_room:
        # A full spool refuses every event (webhook 503, WebSocket paused): nothing gets in.
        parts["store"] = "full"
        store_ok = False
    if facts.stopping:
        parts["bridge"] = "stopping"
    if not store_ok or not any(receiving) or facts.stopping:
        return Readiness.UNAVAILABLE, parts
    return (Readiness.READY if all(receiving) else Readiness.DEGRADED), parts


def one_line(state: Readiness, parts: Mapping[str, str]) -> str:
    """Readiness in one line, for systemd's status text."""
    return f"{state}: " + ", ".join(f"{k} {v}" for k, v in parts.items())


@dataclass(slots=True)
class SinkState:
    """What ``/status`` shows of a sink since start, kept by its worker (``bridge.delivery``)."""

    delivered: int = 0
    dead: int = 0
    dead_recorded: int = 0  # of ``dead``, those whose write has committed
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None

    def carried_over(self) -> SinkState:
        """This state for the worker that replaces this one's (a reload changed the sink), so
        ``/status`` goes on counting. ``dead`` and ``dead_recorded`` restart: the dispatcher
        counts a new worker's own dead letters from zero (``bridge.dispatcher.dlq_changes``)."""
        return replace(self, dead=0, dead_recorded=0)


class SinkFacts(NamedTuple):
    """A configured sink as ``/status`` shows it."""

    type: str
    state: SinkState


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusFacts:
    """What ``/status`` is built from, read off a started bridge at one moment.

    ``counts`` maps every sink holding rows, configured or not, to (pending, dead); ``sinks``
    holds the configured ones. The two differ after a reload removed a sink that still has rows.
    ``oldest_pending`` maps a sink with pending rows to the receipt time of the oldest.
    One field per fact the report shows, hence more than a handful.
    """

    health: HealthFacts
    pid: int
    now: float
    started_at: float | None
    websocket: Mapping[str, object] | None  # the source's own status(); None when disabled
    webhook: Mapping[str, object] | None
    cursor: str | None
    last_event_at: float | None
    possible_gaps: int
    spool_bytes: int
    spool_max_bytes: int
    spool_path: str
    disk: DiskSpace
    min_free: int
    counts: Mapping[str, tuple[int, int]]
    oldest_pending: Mapping[str, float]
    sinks: Mapping[str, SinkFacts]
    config_source: str | None
    last_reload: Mapping[str, object]
    nats: Mapping[str, object] | None = None  # the NATS parts' status; None without NATS
    guarded: Mapping[str, object] = field(default_factory=dict)
    """Per route, what its guard and limits did since start: {route: {reason: {action: n}}}."""


def pending_age(oldest_received_at: float | None, now: float) -> float:
    """Seconds the oldest pending delivery has waited; 0 when none waits."""
    return 0.0 if oldest_received_at is None else round(max(0.0, now - oldest_received_at), 3)


def sink_report(facts: StatusFacts) -> dict[str, object]:
    """Each sink's queue and delivery state, configured sinks and removed ones that hold rows."""
    counts, sinks = facts.counts, facts.sinks
    report: dict[str, object] = {}
    for name in sorted(set(counts) | set(sinks)):
        pending, dead = counts.get(name, (0, 0))
        entry: dict[str, object] = {
            "pending": pending,
            "dead": dead,
            "oldest_pending_age": pending_age(facts.oldest_pending.get(name), facts.now),
            "configured": name in sinks,
        }
        if name in sinks:
            kind, s = sinks[name]
            entry |= {
                "type": kind,
                "delivered": s.delivered,
                "last_error": s.last_error,
                "last_error_at": s.last_error_at,
                "last_delivered_at": s.last_delivered_at,
            }
        report[name] = entry
    return report


def reload_result(
    result: str, errors: list[str], restart_needed: Sequence[str] = (), *, at: float
) -> dict[str, object]:
    """``config.last_reload`` in ``/status``: ``result`` is ``ok``, ``rejected`` (the new file is
    invalid) or ``failed`` (it could not be applied); ``ok`` says the same for older readers.
    ``restart_needed``: the sections of the last applied file that the bridge does not run yet,
    as ``config.restart_needed`` logged them (``bridge.reload.restart_only_changes``); a rejected
    or failed reload changed nothing, so it keeps the previous list."""
    return {
        "at": at,
        "ok": result == "ok",
        "result": result,
        "errors": errors,
        "restart_needed": list(restart_needed),
    }


def status_report(facts: StatusFacts) -> dict[str, object]:
    """Everything ``/status`` and ``openmail-bridge status`` show."""
    state, parts = readiness(facts.health)
    return {
        "state": state,
        "parts": parts,
        "pid": facts.pid,
        "started_at": facts.started_at,
        "uptime": None if facts.started_at is None else round(facts.now - facts.started_at, 3),
        "websocket": facts.websocket,
        "webhook": facts.webhook,
        "cursor": facts.cursor,
        "last_event_at": facts.last_event_at,
        "possible_gaps": facts.possible_gaps,
        "spool": {
            "bytes": facts.spool_bytes,
            "max_bytes": facts.spool_max_bytes,
            "writable": facts.health.store_writable,
            "has_room": facts.health.store_has_room,
            "path": facts.spool_path,
            "free_disk": facts.disk.free,
            "disk_size": facts.disk.size,
            "min_free": facts.min_free,
        },
        "sinks": sink_report(facts),
        "removed_sinks": sorted(n for n in facts.counts if n not in facts.sinks),
        "config": {"source": facts.config_source, "last_reload": facts.last_reload},
        "nats": facts.nats,
        "guarded": facts.guarded,
    }
