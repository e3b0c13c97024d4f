"""The table, the targets marked PASS/FAIL, and the same as JSON.

Ratios are taken only between valid numbers of the same invocation; an INVALID cell is never part
of a ratio or a PASS. Each INVALID cell points to a footnote with the reason.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from bench.measurement import Measurement
from bench.settings import Settings
from bench.targets import (
    BACKLOG,
    BASE_A,
    BASE_B,
    BASE_C,
    BASE_D,
    BASE_W,
    NATS_E2E,
    WS,
    WS_HTTP,
    WS_NATS,
    WS_SEEDED,
    is_webhook,
    webhook_key,
)

THROUGHPUT_VS_A = 0.5
THROUGHPUT_FLOOR_VS_B = 0.3
"""The least the WebSocket -> spool -> file path must carry against the quickstart listener."""
THROUGHPUT_VS_B = 1.0
"""... and what it aims for."""
HTTP_VS_C = 1.0
"""The bridge forwarding WebSocket -> HTTP, against baseline C doing the same without a spool."""
NATS_VS_D = 0.5
"""The bridge publishing WebSocket -> JetStream, against baseline D doing the same without a
spool."""
NATS_ROWS = (BASE_D, WS_NATS, NATS_E2E)
MAX_ADDED_P99_MS = 5.0
LATENCY_WEBHOOK_CONCURRENCY = 16
"""The webhook row the added-latency target names on its own line."""
MAX_RSS_MB = 80.0
SEEDED_THROUGHPUT = 0.8
"""With the dedup record pre-filled, throughput within 20% of the empty store."""
SEEDED_RSS_TOLERANCE = 0.10
"""... and peak RSS unchanged: no more than 10% above the empty store's."""


@dataclass(frozen=True, slots=True)
class Check:
    target: str
    passed: bool
    detail: str

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def latency_base(row: Measurement) -> str:
    """The baseline a row's added latency is over: W (the same signed POSTs into a receiver that
    keeps nothing) for a webhook row, A for every other."""
    return BASE_W if is_webhook(row.key) else BASE_A


def added_p99(row: Measurement, rows: dict[str, Measurement]) -> float | None:
    """p99 latency above that of the row's baseline (:func:`latency_base`), from valid numbers
    only."""
    base = rows.get(latency_base(row))
    if base is None or row.p99 is None or base.p99 is None:
        return None
    return row.p99 - base.p99


def _unmeasured(
    name: str,
    row: Measurement | None,
    ref: Measurement | None,
    figure: Callable[[Measurement], float | None],
    problem: Callable[[Measurement], str | None],
) -> Check:
    """A failed check whose figure is missing from ``row`` or from ``ref``, saying which."""
    bad = row if row is None or figure(row) is None else ref
    if bad is None:
        return Check(name, False, "not measured in this run")
    return Check(name, False, f"not measurable: {bad.label}: {problem(bad)}")


def _throughput(row: Measurement) -> float | None:
    return row.throughput


def _throughput_problem(row: Measurement) -> str | None:
    return row.throughput_problem


def _throughput_ratio(
    rows: dict[str, Measurement], what: str, key: str, base: str, want: float, kind: str = ""
) -> Check:
    label = rows[base].label if base in rows else base
    name = f"{what} events/s >= {want:.1f} x {label}{f' ({kind})' if kind else ''}"
    row, ref = rows.get(key), rows.get(base)
    value = ratio(row.throughput if row else None, ref.throughput if ref else None)
    if value is None:
        return _unmeasured(name, row, ref, _throughput, _throughput_problem)
    assert row is not None
    assert ref is not None
    detail = f"{value:.2f} x ({row.throughput:,.0f} vs {ref.throughput:,.0f} events/s)"
    return Check(name, value >= want, detail)


def _added_latency(rows: dict[str, Measurement], key: str, name: str) -> Check:
    row = rows.get(key)
    base = rows.get(latency_base(row)) if row else None
    value = added_p99(row, rows) if row else None
    if value is None:
        return _unmeasured(name, row, base, lambda r: r.p99, lambda r: r.latency_problem)
    assert row is not None
    assert base is not None
    detail = f"{value:.1f} ms (p99 {row.p99_ms:.2f} ms vs {base.p99_ms:.2f} ms for {base.label})"
    return Check(name, value <= MAX_ADDED_P99_MS, detail)


def _base_problem(row: Measurement, rows: dict[str, Measurement]) -> str:
    """Why ``row`` has no added latency: its own latency run, or its baseline's."""
    if row.latency_problem:
        return row.latency_problem
    base = rows.get(latency_base(row))
    return (base.latency_problem if base else None) or f"no {latency_base(row)}"


def _every_row(
    rows: list[Measurement],
    name: str,
    value: Callable[[Measurement], float | None],
    problem: Callable[[Measurement], str | None],
    ok: Callable[[float], bool],
    unit: str,
) -> Check:
    parts, passed = [], bool(rows)
    for row in rows:
        v = value(row)
        if v is None:
            passed = False
            parts.append(f"{row.key} INVALID ({problem(row) or 'no value'})")
        else:
            passed &= ok(v)
            parts.append(f"{row.key} {v:.1f} {unit}{'' if ok(v) else ' (over)'}")
    return Check(name, passed, "; ".join(parts) or "no bridge row measured")


def check_targets(rows: dict[str, Measurement], rate: float) -> list[Check]:
    """Every target, judged on the valid figures of ``rows`` (measured at ``rate`` events/s)."""
    bridge = [r for r in rows.values() if r.is_bridge]
    latency = f"p99 added latency <= {MAX_ADDED_P99_MS:g} ms at {rate:,.0f} events/s"
    webhook = LATENCY_WEBHOOK_CONCURRENCY
    checks = [
        _throughput_ratio(rows, "bridge WS", WS, BASE_A, THROUGHPUT_VS_A),
        _throughput_ratio(rows, "bridge WS", WS, BASE_B, THROUGHPUT_FLOOR_VS_B, "floor"),
        _throughput_ratio(rows, "bridge WS", WS, BASE_B, THROUGHPUT_VS_B, "goal"),
        _throughput_ratio(rows, "bridge WS -> HTTP", WS_HTTP, BASE_C, HTTP_VS_C),
        _added_latency(rows, webhook_key(webhook), f"{latency}, webhook c={webhook}"),
        _every_row(
            [r for r in bridge if r.latency_measured],
            f"{latency}, every bridge row with a latency run",
            lambda r: added_p99(r, rows),
            lambda r: _base_problem(r, rows),
            lambda v: v <= MAX_ADDED_P99_MS,
            "ms",
        ),
        _every_row(
            bridge,
            f"peak RSS <= {MAX_RSS_MB:g} MB (every bridge row, the backlog drain included)",
            lambda r: r.peak_rss_mb,
            _throughput_problem,
            lambda v: v <= MAX_RSS_MB,
            "MB",
        ),
    ]
    seeded, empty = rows.get(WS_SEEDED), rows.get(WS)
    label = seeded.label.removeprefix("bridge WS, ") if seeded else "stored ids"
    name = f"with {label}: events/s within {1 - SEEDED_THROUGHPUT:.0%} of the empty store"
    value = ratio(seeded.throughput if seeded else None, empty.throughput if empty else None)
    if value is None:
        checks.append(_unmeasured(name, seeded, empty, _throughput, _throughput_problem))
    else:
        checks.append(Check(name, value >= SEEDED_THROUGHPUT, f"{value:.2f} x the empty store"))
    name = f"with {label}: peak RSS unchanged (within {SEEDED_RSS_TOLERANCE:.0%})"
    value = ratio(seeded.peak_rss_mb if seeded else None, empty.peak_rss_mb if empty else None)
    if value is None:
        checks.append(Check(name, False, "peak RSS not measured"))
    else:
        assert seeded is not None
        assert empty is not None
        detail = f"{seeded.peak_rss_mb:.1f} vs {empty.peak_rss_mb:.1f} MB"
        checks.append(Check(name, value <= 1 + SEEDED_RSS_TOLERANCE, detail))
    checks.append(_throughput_ratio(rows, "bridge WS -> JetStream", WS_NATS, BASE_D, NATS_VS_D))
    return checks


# --- rendering -----------------------------------------------------------------------------------

BASELINES = (BASE_A, BASE_B, BASE_C, BASE_D, BASE_W)
"""The rows every events/s is a ratio to, in column order."""
HEADERS = (
    "configuration", "events/s", "ratio vs A", "ratio vs B", "ratio vs C", "ratio vs D",
    "ratio vs W", "p50 ms", "p99 ms", "p99 added ms", "drain s", "peak RSS MB", "CPU us/event",
    "paced CPU us/event",
)  # fmt: skip


def ratios(row: Measurement, rows: dict[str, Measurement]) -> list[float | None]:
    """``row``'s events/s over each baseline's, in ``BASELINES`` order (None when not valid)."""
    bases = [rows.get(key) for key in BASELINES]
    return [ratio(row.throughput, base.throughput if base else None) for base in bases]


class _Footnotes:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"INVALID[{self.reasons.index(reason) + 1}]"


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _cells(row: Measurement, rows: dict[str, Measurement], notes: _Footnotes) -> list[str]:
    if row.throughput_problem:
        speed = [notes.mark(row.throughput_problem), *("-" for _ in BASELINES)]
    else:
        speed = [_fmt(row.events_per_s, ",.0f")]
        speed += [_fmt(value, ".2f", "x") for value in ratios(row, rows)]
    if not row.latency_measured:
        latency = ["-", "-", "-"]
    elif row.latency_problem:
        mark = notes.mark(row.latency_problem)
        latency = [mark, mark, "-"]
    else:
        latency = [
            _fmt(row.p50_ms, ".2f"),
            _fmt(row.p99_ms, ".2f"),
            _fmt(added_p99(row, rows), "+.2f"),
        ]
    return [
        row.label,
        *speed,
        *latency,
        _fmt(row.drain_s, ".2f"),
        _fmt(row.peak_rss_mb, ".1f"),
        _fmt(row.cpu_us_per_event, ".0f"),
        _fmt(row.paced_cpu_us_per_event, ".0f"),
    ]


def _grid(lines: Iterable[list[str]]) -> list[str]:
    lines = list(lines)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return out


def render(rows: list[Measurement], checks: list[Check], settings: Settings) -> str:
    by_key = {r.key: r for r in rows}
    notes = _Footnotes()
    body = [_cells(r, by_key, notes) for r in rows]
    grid = _grid([list(HEADERS), *body])
    rule = "-" * max(len(line) for line in grid)
    out = [
        f"openmail-bridge benchmark: latency at {settings.rate:,.0f} events/s offered for "
        f"{settings.paced_seconds:g}s; events/s from bursts of {settings.burst_baseline:,} "
        f"(baselines A, B), {settings.burst_bridge:,} (bridge WS), {settings.burst_forwarder:,} "
        f"(WS -> HTTP, baselines D, W), {settings.burst_webhook:,} (bridge webhook) events; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    ]
    if BACKLOG in by_key:
        out.append(
            f"backlog drain: {settings.backlog:,} events stored while the hook answers 503, then "
            "drained; its events/s is that backlog over the drain time"
        )
    if any(key in by_key for key in NATS_ROWS):
        out.append(
            "JetStream rows: a nats-server of the run's own (one node, file store); an event has "
            "landed once a reader of the stream received it, or once it is in the sidecar's file"
        )
    out.append(
        "p99 added: over baseline A's p99 (WebSocket rows), baseline W's (webhook rows, whatever"
        " their concurrency)"
    )
    out += [rule, grid[0], rule, *grid[1:], rule]
    out += [f"[{i}] {reason}" for i, reason in enumerate(notes.reasons, 1)]
    out += [f"note: {r.key}: {n}" for r in rows for n in r.notes]
    if checks:
        out += ["", "targets"]
        out += [f"  {c.verdict}  {c.target}: {c.detail}" for c in checks]
    return "\n".join(out)


def _added_json(row: Measurement, rows: dict[str, Measurement]) -> dict[str, object]:
    added = added_p99(row, rows)
    return {"p99_added_ms": added, "p99_added_over": None if added is None else latency_base(row)}


def as_json(rows: list[Measurement], checks: list[Check], settings: Settings) -> dict[str, object]:
    by_key = {r.key: r for r in rows}
    return {
        "settings": asdict(settings),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rows": [
            r.as_dict()
            | dict(zip(("vs_a", "vs_b", "vs_c", "vs_d", "vs_w"), ratios(r, by_key), strict=True))
            | _added_json(r, by_key)
            for r in rows
        ],
        "targets": [asdict(c) | {"verdict": c.verdict} for c in checks],
        "all_pass": all(c.passed for c in checks),
    }
