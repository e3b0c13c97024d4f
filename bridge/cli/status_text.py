"""``status`` as text: a running bridge's ``/status`` report in human units, as of ``now``.

Pure: a report (the JSON ``/status`` answers) and a clock reading in, lines out.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Final, TypeGuard

from bridge.printable import printable
from bridge.store.bounds import CHECKPOINT_MARGIN, disk_cost

_SIZE_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(count: object) -> str:
    """``943`` -> ``943 B``; ``1073741824`` -> ``1 GiB``; ``1536`` -> ``1.5 KiB``."""
    if not isinstance(count, int | float) or isinstance(count, bool):
        return "?"
    value = float(count)
    for unit in _SIZE_UNITS:
        if abs(value) < 1024 or unit == _SIZE_UNITS[-1]:
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


def human_duration(seconds: float) -> str:
    """``42`` -> ``42s``; ``3725`` -> ``1h 2m``; ``200000`` -> ``2d 7h``: the two largest units."""
    whole = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for (unit, size), (next_unit, next_size) in itertools.pairwise(units):
        if whole >= size:
            rest = whole % size // next_size
            return f"{whole // size}{unit}" + (f" {rest}{next_unit}" if rest else "")
    return f"{whole}s"


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _moment(at: object, now: float) -> str | None:
    """A Unix time as ``12s ago (2024-05-01 12:00:00 UTC)``; None when unknown."""
    if not _is_number(at):
        return None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return f"{human_duration(now - at)} ago ({stamp})"


def format_status(status: Mapping[str, object], now: float) -> str:
    """The lines ``openmail-bridge status`` prints for a ``/status`` report."""
    lines: list[str] = []
    uptime, started = status.get("uptime"), status.get("started_at")
    if not _is_number(uptime) and _is_number(started):  # a bridge that reports no uptime
        uptime = now - started
    up = f", up {human_duration(uptime)}" if _is_number(uptime) else ""
    lines.append(f"state: {status.get('state')} (pid {status.get('pid')}{up})")
    parts, ws = status.get("parts"), status.get("websocket")
    # The WebSocket's state is one of the parts: shown there once, with why it is down.
    reason = f" ({printable(ws['reason'])})" if isinstance(ws, dict) and ws.get("reason") else ""
    if isinstance(parts, dict):
        lines += [f"  {k}: {v}{reason if k == 'websocket' else ''}" for k, v in parts.items()]
    elif isinstance(ws, dict):  # a report without parts still says how the WebSocket is
        lines.append(f"websocket: {ws.get('state')}{reason}")
    lines.append(f"last event: {_moment(status.get('last_event_at'), now) or 'none since start'}")
    if isinstance(ws, dict):  # the replay cursor means nothing to a bridge without the WebSocket
        cursor = status.get("cursor")
        lines.append(f"cursor: {cursor if cursor else 'none yet (no WebSocket event stored)'}")
    gaps = status.get("possible_gaps")
    if gaps:
        lines.append(f"possible gaps: {gaps}")
    lines += _spool_lines(status.get("spool"))
    lines += _sink_lines(status.get("sinks"), now)
    lines += _nats_lines(status.get("nats"), now)
    lines += _config_lines(status.get("config"), now)
    return "\n".join(lines)


def _spool_lines(spool: object) -> list[str]:
    if not isinstance(spool, dict):
        return []
    held, limit = spool.get("bytes"), spool.get("max_bytes")
    share = ""
    if isinstance(held, int) and isinstance(limit, int) and limit > 0:
        share = f" ({100 * held / limit:.1f}%)"
    flags = [] if spool.get("writable", True) else ["NOT WRITABLE"]
    if spool.get("has_room") is False:
        flags.append(f"FULL ({_full_bound(spool)})")
    extra = f", {', '.join(flags)}" if flags else ""
    lines = [f"spool: {human_bytes(held)} of {human_bytes(limit)}{share}{extra}"]
    free, size, floor = spool.get("free_disk"), spool.get("disk_size"), spool.get("min_free")
    if isinstance(free, int) and isinstance(size, int):
        kept = f", min_free {human_bytes(floor)}" if isinstance(floor, int) and floor else ""
        lines.append(f"  disk: {human_bytes(free)} free of {human_bytes(size)}{kept}")
    return lines


def _full_bound(spool: Mapping[str, object]) -> str:
    """Which bound keeps a full spool from taking the next event. Under max_bytes the spool is
    also full while a refused event still does not fit the room left, so max_bytes holds unless
    the disk could not take an event filling that room (the room check of ``bridge.store``)."""
    held, limit = spool.get("bytes"), spool.get("max_bytes")
    if not isinstance(held, int) or not isinstance(limit, int):
        return "state.max_bytes or state.min_free"
    if held >= limit:
        return "state.max_bytes"
    if "min_free" not in spool:  # a bridge older than the disk figures: either may hold
        return "state.max_bytes or state.min_free"
    free, floor = spool.get("free_disk"), spool.get("min_free")
    # No floor kept (min_free: 0), or a disk that cannot be read: max_bytes is the only bound.
    if not isinstance(free, int) or not isinstance(floor, int) or floor <= 0:
        return _room_left(limit - held)
    if free - floor < disk_cost(limit - held) + CHECKPOINT_MARGIN:
        return "state.min_free: the disk is at its floor"
    return _room_left(limit - held)


def _room_left(room: int) -> str:
    return f"state.max_bytes: {human_bytes(room)} left, too little for the next event"


def _sink_lines(sinks: object, now: float) -> list[str]:
    if not isinstance(sinks, dict) or not sinks:
        return []
    lines = ["sinks:"]
    for name, info in sinks.items():
        if not isinstance(info, dict):
            continue
        counts = f"pending {info.get('pending')}, dead {info.get('dead')}"
        age = info.get("oldest_pending_age")
        if _is_number(age) and age > 0:
            counts += f" (oldest pending {human_duration(age)})"
        if not info.get("configured"):
            lines.append(f"  {name} (removed from config): {counts}")
            continue
        lines.append(f"  {name} ({info.get('type')}): delivered {info.get('delivered')}, {counts}")
        if last := _moment(info.get("last_delivered_at"), now):
            lines.append(f"    last delivered {last}")
        if info.get("last_error"):
            when = _moment(info.get("last_error_at"), now)
            error = printable(info["last_error"])
            lines.append(f"    last error{f' {when}' if when else ''}: {error}")
    return lines


def _nats_lines(nats: object, now: float) -> list[str]:
    """The ``nats`` block: the connection, the stream check, each NATS sink's publishes and the
    consumer, each with what went wrong last."""
    if not isinstance(nats, dict):
        return []
    conn = nats.get("connection")
    conn = conn if isinstance(conn, dict) else {}
    # The connection's state is one of the parts above: here, where it is or would be.
    lines = ["nats:"]
    if conn.get("state") == "connected" and conn.get("server"):
        since = _moment(conn.get("connected_since"), now)
        lines.append(f"  server: {printable(conn['server'])}{f', since {since}' if since else ''}")
    elif isinstance(servers := conn.get("servers"), list):
        lines.append(f"  servers: {printable(', '.join(map(str, servers)))} (not connected)")
    if conn.get("reconnects"):
        lines.append(f"  reconnects: {conn['reconnects']}")
    lines += _error_line("  ", conn.get("last_error"))
    lines += _stream_lines(nats.get("stream"), now)
    publishes = nats.get("publishes")
    if isinstance(publishes, dict):
        for name, sink in publishes.items():
            if isinstance(sink, dict):
                lines.append(
                    f"  publishes {name} ({printable(sink.get('subject'))}): acked "
                    f"{sink.get('acked')}, duplicate {sink.get('duplicate')}, "
                    f"failed {sink.get('failed')}"
                )
    consumer = nats.get("consumer")
    if isinstance(consumer, dict):
        lines.append(
            f"  consumer {consumer.get('consumer')}: {consumer.get('state')}, pending "
            f"{_known(consumer.get('pending'))}, ack pending {_known(consumer.get('ack_pending'))}"
            f", redelivered {_known(consumer.get('redelivered'))}"
        )
        lines.append(
            f"    acked {consumer.get('acked')}, terminated {consumer.get('terminated')}, "
            f"unacked {consumer.get('unacked')}, held {consumer.get('held')}"
        )
        # Mail this sidecar never got: removed by the stream's limits, or taken by another
        # client of the same consumer. Shown only when it happened, as a warning would be.
        if lost := [
            f"{consumer[key]} {words}"
            for key, words in (
                ("skipped", "skipped (the stream removed them before they were fetched)"),
                ("delivered_elsewhere", "delivered to another client of this consumer"),
            )
            if isinstance(consumer.get(key), int) and consumer[key] > 0
        ]:
            lines.append("    missed: " + "; ".join(lost))
        lines += _error_line("    ", consumer.get("last_error"))
    return lines


def _stream_lines(stream: object, now: float) -> list[str]:
    if not isinstance(stream, dict):
        return []
    counts = ""
    if stream.get("messages") is not None:
        counts = f", {stream['messages']} messages, last sequence {stream.get('last_seq')}"
        # Counts the server has not confirmed since it was asked again are an old reading.
        read_at = stream.get("read_at")
        if stream.get("unanswered_since") is not None and isinstance(read_at, (int, float)):
            counts += f" (as read {human_duration(now - read_at)} ago: no answer since)"
    lines = [f"  stream {stream.get('name')}: {stream.get('check')}{counts}"]
    if stream.get("problem"):
        lines.append(f"    problem: {printable(stream['problem'])}")
    warnings = stream.get("warnings")
    if isinstance(warnings, list):
        lines += [f"    warning: {printable(warning)}" for warning in warnings]
    return lines


def _known(value: object) -> str:
    """A count the server has not told yet (no consumer info read so far) is shown as such."""
    return "unknown" if value is None else str(value)


def _error_line(indent: str, error: object) -> list[str]:
    return [f"{indent}last error: {printable(error)}"] if error else []


def _config_lines(config: object, now: float) -> list[str]:
    if not isinstance(config, dict):
        return []
    lines = [f"config: {config.get('source') or '(not from a file)'}"]
    reload = config.get("last_reload")
    if not isinstance(reload, dict) or not reload:
        lines.append("  last reload: none since start")
        return lines
    when = _moment(reload.get("at"), now) or "at an unknown time"
    needed = reload.get("restart_needed")  # parts of the file that only a restart applies
    restart = ""
    if isinstance(needed, list) and needed:
        restart = f"; RESTART NEEDED for {printable(', '.join(map(str, needed)))}"
    if reload.get("ok"):
        lines.append(f"  last reload {when}: applied{restart}")
        return lines
    # rejected: the file is invalid; failed: it could not be applied. Either way nothing changed.
    result = str(reload.get("result") or "rejected").upper()
    still = "the bridge still runs the config before it"
    lines.append(f"  last reload {when}: {result}, {still}{restart}")
    errors = reload.get("errors")
    if isinstance(errors, list):
        lines += [f"    {error}" for error in errors]
    return lines
