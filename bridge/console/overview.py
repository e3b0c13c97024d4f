"""What the console's panels show (``/api/overview``), computed from ``/status`` and a few more
facts: the header's readiness and its reason, each source's state in words an operator reads at
a glance, the spool's two bounds, and each sink's row with its state (ok / retrying / failing).

Pure: the report and the facts in, one JSON-ready dict out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bridge.sources.ws_session import ConnectionState, DisconnectKind

FAILING_AFTER: Final = 60.0
"""Seconds a sink may hold pending rows after an error before it counts as failing."""


class SourceState(enum.StrEnum):
    """The WebSocket source's state as the console names it."""

    STARTING = "starting"
    SUBSCRIBED = "subscribed"
    RECONNECTING = "reconnecting"  # connecting, or down and about to retry
    REJECTED_KEY = "rejected key"
    REJECTED = "rejected"  # too many connections, an inbox the key does not own
    PAUSED = "paused by pushback"  # the spool cannot take events
    STOPPED = "stopped"


class SinkHealth(enum.StrEnum):
    OK = "ok"  # nothing failed since the last delivery
    RETRYING = "retrying"  # an attempt failed; the rows wait for their next one
    FAILING = "failing"  # rows went dead since the last delivery, or wait too long


# The source's own words to the console's.
_WS_STATES: Final[Mapping[str, SourceState]] = {
    ConnectionState.IDLE: SourceState.STARTING,
    ConnectionState.SUBSCRIBED: SourceState.SUBSCRIBED,
    ConnectionState.CONNECTING: SourceState.RECONNECTING,
    ConnectionState.DOWN: SourceState.RECONNECTING,
    ConnectionState.PAUSED: SourceState.PAUSED,
    ConnectionState.STOPPED: SourceState.STOPPED,
}
# Part states /readyz reports when all is well with that part.
_GOOD_PARTS: Final = frozenset({"subscribed", "listening", "writable", "connected", "disabled"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the console shows beyond ``/status``, read at the same moment."""

    version: str
    now: float
    websocket_down_kind: str | None  # why the WebSocket is down (``DisconnectKind``), if it is
    webhook_accepted: int
    webhook_rejected: Mapping[str, int]  # reason -> requests and connections rejected
    free_disk: int | None  # bytes free where the spool lives; None when unreadable
    disk_size: int | None  # the size of that filesystem
    min_free: int
    delivered_per_minute: Mapping[str, int]  # sink -> deliveries in the last 60 seconds
    show_content: bool


def _map(value: object) -> Mapping[str, object]:
    return value if isinstance(value, Mapping) else {}


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def source_state(state: str, down_kind: str | None) -> SourceState:
    """The WebSocket source's state, in the console's words."""
    shown = _WS_STATES.get(state, SourceState.RECONNECTING)
    if shown is SourceState.RECONNECTING and down_kind is not None:
        if down_kind == DisconnectKind.KEY_REJECTED:
            return SourceState.REJECTED_KEY
        if down_kind in (DisconnectKind.TOO_MANY_CONNECTIONS, DisconnectKind.SUBSCRIBE_REJECTED):
            return SourceState.REJECTED
    return shown


def readiness_reason(state: str, parts: Mapping[str, object], ws_reason: object) -> str:
    """Why the bridge is not ready, from the parts ``/readyz`` names; empty when it is."""
    if state == "ready":
        return ""
    reasons = []
    for part, value in parts.items():
        if str(value) in _GOOD_PARTS:
            continue
        text = f"{part} {value}"
        if part == "websocket" and isinstance(ws_reason, str) and ws_reason:
            text += f" ({ws_reason})"
        reasons.append(text)
    return "; ".join(reasons)


def sink_health(
    *,
    pending: int,
    oldest_pending_age: float,
    last_error_at: float | None,
    last_delivered_at: float | None,
) -> SinkHealth:
    if last_error_at is None or (
        last_delivered_at is not None and last_delivered_at >= last_error_at
    ):
        return SinkHealth.OK
    if pending and oldest_pending_age < FAILING_AFTER:
        return SinkHealth.RETRYING
    # Nothing pending after an error: the last rows went dead.
    return SinkHealth.FAILING


def _websocket(report: Mapping[str, object], facts: Facts) -> dict[str, object] | None:
    ws = report.get("websocket")
    if not isinstance(ws, Mapping):
        return None
    state = source_state(str(ws.get("state")), facts.websocket_down_kind)
    return {
        "state": state.value,
        "raw_state": ws.get("state"),
        "since": ws.get("since"),
        "reason": ws.get("reason"),
        "cursor": ws.get("cursor"),
        "last_event_at": ws.get("last_event_at"),
        "reconnects": ws.get("reconnect_attempts"),
        "possible_gaps": ws.get("possible_gaps"),
    }


def _webhook(report: Mapping[str, object], facts: Facts) -> dict[str, object] | None:
    hook = report.get("webhook")
    if not isinstance(hook, Mapping):
        return None
    return {
        "state": hook.get("state"),
        "listen": hook.get("listen"),
        "path": hook.get("path"),
        "last_event_at": hook.get("last_event_at"),
        "accepted": facts.webhook_accepted,
        "rejected": dict(sorted(facts.webhook_rejected.items())),
    }


def _nats(report: Mapping[str, object]) -> dict[str, object] | None:
    nats = report.get("nats")
    if not isinstance(nats, Mapping):
        return None
    connection, consumer = _map(nats.get("connection")), nats.get("consumer")
    shown: dict[str, object] = {
        "state": connection.get("state"),
        "server": connection.get("server"),
        "reconnects": connection.get("reconnects"),
        "last_error": connection.get("last_error"),
        "consumer": None,
    }
    if isinstance(consumer, Mapping):
        shown["consumer"] = {
            key: consumer.get(key)
            for key in ("state", "stream", "consumer", "acked", "pending", "last_error")
        }
    return shown


def _sinks(report: Mapping[str, object], facts: Facts) -> list[dict[str, object]]:
    rows = []
    for name, value in _map(report.get("sinks")).items():
        entry = _map(value)
        pending = int(_num(entry.get("pending")) or 0)
        health = sink_health(
            pending=pending,
            oldest_pending_age=_num(entry.get("oldest_pending_age")) or 0.0,
            last_error_at=_num(entry.get("last_error_at")),
            last_delivered_at=_num(entry.get("last_delivered_at")),
        )
        rows.append(
            {
                "name": name,
                "type": entry.get("type"),
                "configured": entry.get("configured"),
                "state": health.value,
                "pending": pending,
                "dead": entry.get("dead"),
                "delivered": entry.get("delivered"),
                "delivered_per_minute": facts.delivered_per_minute.get(str(name), 0),
                "last_error": entry.get("last_error"),
                "last_error_at": entry.get("last_error_at"),
                "last_delivered_at": entry.get("last_delivered_at"),
            }
        )
    return rows


def overview(report: Mapping[str, object], facts: Facts) -> dict[str, object]:
    """``/api/overview``: the header, sources, spool and sinks panels."""
    state = str(report.get("state"))
    parts = _map(report.get("parts"))
    spool = _map(report.get("spool"))
    ws = _map(report.get("websocket"))
    return {
        "version": facts.version,
        "now": facts.now,
        "started_at": report.get("started_at"),
        "uptime": report.get("uptime"),
        "readiness": {
            "state": state,
            "reason": readiness_reason(state, parts, ws.get("reason")),
            "parts": dict(parts),
        },
        "sources": {
            "websocket": _websocket(report, facts),
            "webhook": _webhook(report, facts),
            "nats": _nats(report),
        },
        "spool": {
            "bytes": spool.get("bytes"),
            "max_bytes": spool.get("max_bytes"),
            "free_disk": facts.free_disk,
            "disk_size": facts.disk_size,
            "min_free": facts.min_free,
            "writable": spool.get("writable"),
            "has_room": spool.get("has_room"),
        },
        "sinks": _sinks(report, facts),
        "show_content": facts.show_content,
    }
